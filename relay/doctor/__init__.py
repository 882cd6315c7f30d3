"""`relay doctor`: checks the configuration and every configured service, and says what to fix.

One line per check, `OK`, `WARN`, `FAIL` or `SKIP` (not configured, or impossible because an
earlier check failed), then a count. The exit status is 0 only when nothing FAILs.

What is checked, and where:

* `configuration`: the settings themselves (`.env` + environment), the provider and its
  normalized realtime URL, missing or contradictory variables, the tool registry (RELAY_TOOLS);
* `realtime`: DNS, then a real WebSocket connect with the configured auth through the provider
  adapter (the same code the relay uses; its `ProviderConnectError` messages say what to fix: a
  rejected key, a missing deployment, a timeout), then the first server event; Azure without a
  key: whether an Entra ID credential can produce a token;
* `twilio_account`: the account (REST `GET /Accounts/{sid}.json`, base URL from
  TWILIO_API_BASE_URL) and, with TWILIO_PHONE_NUMBER, whether that number's voice webhook is
  PUBLIC_URL/incoming-call;
* `agents` (with AGENTS_FILE): the file loads (or one FAIL line per problem), then one line per
  agent, `agent NAME`: the realtime check above run with that agent's settings (its provider,
  endpoint, key or Entra ID, model or deployment), in place of the environment's own;
* `services`: PUBLIC_URL answering `/health`, Redis (PING) when REDIS_URL is set and Tavily (a
  one-result search) when TAVILY_API_KEY is set.

`command` runs them (network checks concurrently, each bounded by a timeout); `report` holds what
a check says.
"""

from relay.doctor.agents import check_agent, check_agents
from relay.doctor.command import doctor_command, run_doctor
from relay.doctor.configuration import check_configuration, check_tools
from relay.doctor.realtime import check_realtime
from relay.doctor.report import Check, DoctorReport, Status
from relay.doctor.services import check_public_url, check_redis, check_tavily
from relay.doctor.twilio_account import check_twilio

__all__ = [
    "Check",
    "DoctorReport",
    "Status",
    "check_agent",
    "check_agents",
    "check_configuration",
    "check_public_url",
    "check_realtime",
    "check_redis",
    "check_tavily",
    "check_tools",
    "check_twilio",
    "doctor_command",
    "run_doctor",
]
