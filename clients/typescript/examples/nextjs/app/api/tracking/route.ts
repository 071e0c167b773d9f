// The tracker's counters (queued, sent, retried, dropped), for whoever runs
// this app to see whether every reply has reached the service.
import { trackingStats } from "mlops-chat-tracking";

export const dynamic = "force-dynamic";

export function GET() {
  return Response.json(trackingStats());
}
