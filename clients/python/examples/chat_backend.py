"""A Python chat backend, as a script: replays customer conversations and reports each reply.

Configured only by MLOPS_SERVICE_URL and MLOPS_API_KEY, as a deployment would
be. The same conversation and pause protocol as the TypeScript client's
fixtures/chat-app.ts:

CHAT_BUSINESS_ID    business the conversations belong to
CHAT_CONVERSATIONS  how many conversations (5 turns each; default 8)
CHAT_PAUSE          "1": print PAUSED after the first half and wait for a line
                    on stdin; after the second half wait until the tracker has
                    failed once, print SENT and wait for another line

Prints one JSON line at the end: reply statuses, timings and tracker stats.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlops_tracking import calculate_token_usage, estimate_api_cost, flush, track_metrics, tracking_stats  # noqa: E402

SCRIPT = [
    "Hello! Are you open on Saturdays?",
    "How much is a standard cleaning?",
    "I'd like to book an appointment next week.",
    "[model down] Tuesday morning please",
    "Actually, can I talk to a person?",
]


def business_context(business_id: str) -> str:
    return f"You are the receptionist of {business_id}. Answer briefly, offer appointments, hand over when asked."


def generate_reply(messages: list[dict[str, str]]) -> dict[str, str]:
    """A deterministic stand-in for the model call; "[model down]" fails as a provider outage would."""
    text = messages[-1]["content"].lower()
    if "[model down]" in text:
        raise ConnectionError("model provider unavailable")
    if "person" in text or "human" in text:
        return {"message": "I am connecting you with a member of our team now.", "intent": "handoff",
                "type": "human_handoff"}
    if "appointment" in text or "book" in text:
        return {"message": "I can book you in on Tuesday at 10:00 or Wednesday at 14:30.", "intent": "appointment",
                "type": "appointment_booking"}
    return {"message": "Thanks for asking. We are open Monday to Friday, 9:00 to 17:30.", "intent": "general",
            "type": "text"}


def chat(business_id: str, conversation_id: str, session_id: str, messages: list[dict[str, str]]) -> int:
    """The chat endpoint: answer, report the reply, return the HTTP status it would send."""
    started = time.perf_counter()
    context = business_context(business_id)
    try:
        reply = generate_reply(messages)
    except ConnectionError:
        track_metrics({
            "business_id": business_id, "session_id": session_id,
            "response_time_ms": (time.perf_counter() - started) * 1000, "success_rate": 0.0, "tokens_used": 0,
            "api_cost_usd": 0, "intent_detected": "error", "human_handoff_requested": True, "response_type": "error",
        })
        return 500
    tokens = calculate_token_usage(context, messages[-1]["content"], reply["message"])
    track_metrics({
        "business_id": business_id, "conversation_id": conversation_id, "session_id": session_id,
        "response_time_ms": (time.perf_counter() - started) * 1000, "success_rate": 1.0,
        **tokens.event_fields(), "api_cost_usd": estimate_api_cost(tokens.total_tokens),
        "model_name": "gemini-1.5-flash", "intent_detected": reply["intent"],
        "appointment_requested": reply["type"] == "appointment_booking",
        "human_handoff_requested": reply["type"] == "human_handoff",
        "user_message_length": len(messages[-1]["content"]), "ai_response_length": len(reply["message"]),
        "response_type": reply["type"],
    })
    messages.append({"role": "assistant", "content": reply["message"]})
    return 200


def main() -> None:
    business_id = os.environ.get("CHAT_BUSINESS_ID", "test-business")
    conversations = int(os.environ.get("CHAT_CONVERSATIONS", "8"))
    pause = os.environ.get("CHAT_PAUSE") == "1"
    statuses: list[int] = []
    timings: list[float] = []
    for c in range(conversations):
        if pause and c == (conversations + 1) // 2:
            print("PAUSED", flush=True)
            sys.stdin.readline()
        messages: list[dict[str, str]] = []
        for text in SCRIPT:
            messages.append({"role": "user", "content": text})
            started = time.perf_counter()
            statuses.append(chat(business_id, f"conversation-{c}", f"session-{c}", messages))
            timings.append((time.perf_counter() - started) * 1000)
    if pause:
        while tracking_stats().retries == 0:
            time.sleep(0.05)
        print("SENT", flush=True)
        sys.stdin.readline()
    flushed = flush(60)
    print(json.dumps({"statuses": statuses, "timings": timings, "flushed": asdict(flushed),
                      "stats": asdict(tracking_stats())}), flush=True)


if __name__ == "__main__":
    main()
