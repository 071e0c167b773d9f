-- wrk script: POST one seed-shaped tracking event per request (the seed's curl example payload)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"business_id":"test-business","conversation_id":"c1","session_id":"s1","response_time_ms":1500,"success_rate":1.0,"tokens_used":150,"api_cost_usd":0.002,"model_name":"gemini-1.5-flash","intent_detected":"general","appointment_requested":false,"human_handoff_requested":false,"user_message_length":45,"ai_response_length":120,"response_type":"text"}'
-- This service in production mode needs an ingest key; bench_ingest.py passes it here. The seed takes none.
local key = os.getenv("MLOPS_BENCH_API_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
