"""`load_agents`: AGENTS_FILE read, every agent checked and its settings built.

Every problem of the file is found in one pass and raised together (`ConfigError.problems`), each
naming the file, the agent, the field and the fix: `agents.toml: agents.sales.provider = "azur":
use "openai" or "azure"`.

What an agent of the file inherits from the environment (README "Agents" says the same):

* every setting it does not set itself (models, voice, timeouts, Twilio, tools, ...);
* its key: OPENAI_API_KEY (an OpenAI agent) or AZURE_OPENAI_API_KEY (an Azure agent), unless
  `api_key_env` names another variable. A key belongs to its resource: an Azure agent with an
  `azure_endpoint` other than AZURE_OPENAI_ENDPOINT does not get AZURE_OPENAI_API_KEY; it names
  its key with `api_key_env` or authenticates with Entra ID;
* never ALLOW_CROSS_PROVIDER_FALLBACK: an agent of the file falls back to the other vendor only
  when it sets `allow_cross_provider_fallback = true` itself, so an Azure agent kept in the EU never
  reaches OpenAI because the environment allowed it for another agent.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relay.agents.book import DEFAULT_AGENT, AgentBook, AgentSpec, environment_agent
from relay.agents.fields import AGENT_FIELDS, SETTING_OF, shown, unknown_field_problem
from relay.agents.tool_names import resolve_tools
from relay.config import Settings, environment_secret
from relay.config_checks import describe_errors, normalize_http_url
from relay.errors import ConfigError
from relay.phone_numbers import is_e164, normalize_number

__all__ = ["load_agents"]

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DESCRIPTION = 200
_KIND_FIX = {
    "text": "use a string in double quotes",
    "bool": "use true or false",
    "list": 'use a list of strings, e.g. ["a", "b"]',
    "text_or_list": 'use a list of strings, e.g. ["+15550100001", "sales=+15550100002"]',
}


def load_agents(settings: Settings) -> AgentBook:
    """The agents of AGENTS_FILE, or, without it, the environment as the one agent `default`
    (whose settings are `settings` itself). Raises ConfigError listing every problem."""
    if not settings.agents_file:
        return AgentBook.single(settings)
    return _Loader(settings).load()


class _Loader:
    def __init__(self, settings: Settings) -> None:
        self.env = settings
        self.where = settings.agents_file
        self.path = Path(settings.agents_file)
        self.problems: list[str] = []
        self.flagged: dict[str, set[str]] = {}  # agent -> its fields that already have a problem

    def add(self, agent: str, tail: str, *, field: bool | None = None) -> None:
        """A problem of `agent`: `tail` starts with its field (`provider = ...`: `agents.NAME.provider
        = ...`) or is about the agent as a whole (`agents.NAME: ...`)."""
        lead = re.match(r"[A-Za-z_]+", tail)
        if field is None:
            field = lead is not None and lead.group(0) in AGENT_FIELDS
        if field and lead is not None:
            self.flagged.setdefault(agent, set()).add(lead.group(0))
        self.problems.append(f"{self.where}: agents.{agent}{'.' if field else ': '}{tail}")

    def fail(self) -> ConfigError:
        return ConfigError("Invalid agents file: " + "; ".join(self.problems), problems=self.problems)

    # --- the file --------------------------------------------------------------------------------
    def load(self) -> AgentBook:
        tables = self._tables(self._read())
        specs: dict[str, AgentSpec] = {}
        for name, table in tables.items():
            spec = self._agent(name, table)
            if spec is not None:
                specs[name] = spec
        default = specs.get(DEFAULT_AGENT) or environment_agent(self.env)
        self._cross_checks(tables, default)
        if self.problems:
            raise self.fail()
        return AgentBook({**specs, default.name: default}, default, self.path)

    def _read(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.path.read_bytes().decode("utf-8"))
        except OSError as exc:
            why = exc.strerror or str(exc)
            self.problems.append(f"{self.where}: cannot read the agents file ({why}): check AGENTS_FILE")
        except UnicodeDecodeError:
            self.problems.append(f"{self.where}: not UTF-8 text: save the agents file as UTF-8")
        except tomllib.TOMLDecodeError as exc:
            self.problems.append(f"{self.where}: not valid TOML: {exc}")
        raise self.fail()

    def _tables(self, document: dict[str, Any]) -> dict[str, dict[str, Any]]:
        for key in document:
            if key != "agents":
                self.problems.append(
                    f"{self.where}: {key}: not part of an agents file: it holds [agents.NAME] tables only"
                )
        agents = document.get("agents")
        if not isinstance(agents, dict) or not agents:
            self.problems.append(
                f"{self.where}: no agents: add an [agents.NAME] table for each agent "
                "(see examples/agents.toml)"
            )
            raise self.fail()
        tables: dict[str, dict[str, Any]] = {}
        for name, table in agents.items():
            if not _NAME_RE.match(name):
                self.add(
                    json_name(name),
                    "an agent's name is a letter, then letters, digits, '_' or '-' (at most 64): rename it",
                )
            elif not isinstance(table, dict):
                self.problems.append(
                    f"{self.where}: agents.{name} = {shown(table)}: an agent is a table: write "
                    f"[agents.{name}] and its fields under it"
                )
            else:
                tables[name] = table
        return tables

    # --- one agent ---------------------------------------------------------------------------------
    def _agent(self, name: str, table: dict[str, Any]) -> AgentSpec | None:
        before = len(self.problems)
        values = self._typed_values(name, table)
        numbers = self._numbers(name, values.get("numbers", []))
        description = self._description(name, values.get("description", ""))
        overrides = self._overrides(name, values)
        tools: tuple[str, ...] | None = None
        if "tools" in values:
            resolved = resolve_tools(values["tools"], self.env)
            for problem in resolved.problems:
                self.add(name, f"tools: {problem}")
            tools = tuple(resolved.names)
            extra = [m for m in resolved.modules if m not in self.env.tool_modules]
            if extra:
                overrides["relay_tools"] = ",".join([*self.env.tool_modules, *extra])
        flagged = self.flagged.get(name, set())
        for field in flagged & set(SETTING_OF):  # said already: Settings would only repeat it
            overrides.pop(SETTING_OF[field], None)
        settings = self._settings(name, overrides, set(values) - flagged)
        if settings is None or len(self.problems) > before:
            return None
        handoffs = tuple(dict.fromkeys(values.get("handoffs", [])))
        return AgentSpec(
            name, numbers, description, tools, handoffs, settings, "file", values.get("api_key_env")
        )

    def _typed_values(self, name: str, table: dict[str, Any]) -> dict[str, Any]:
        """The known fields of `table` whose TOML type is right (a list's items: strings)."""
        values: dict[str, Any] = {}
        for field, value in table.items():
            known = AGENT_FIELDS.get(field)
            if known is None:
                self.add(name, unknown_field_problem(field, set(Settings.model_fields)), field=True)
                continue
            kind = known[1]
            strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
            ok = {
                "text": isinstance(value, str),
                "bool": isinstance(value, bool),
                "list": strings,
                "text_or_list": isinstance(value, str) or strings,
            }[kind]
            if not ok:
                self.add(name, f"{field} = {shown(value)}: {_KIND_FIX[kind]}")
                continue
            values[field] = value
        return values

    def _numbers(self, name: str, numbers: list[str]) -> tuple[str, ...]:
        for number in numbers:
            if not is_e164(number):
                compact = normalize_number(number)
                fix = f'write "{compact}"' if is_e164(compact) else 'write it as "+15551234567"'
                self.add(
                    name,
                    f"numbers: {shown(number)} is not an E.164 number: {fix} ('+', country code, digits)",
                )
        return tuple(dict.fromkeys(numbers))

    def _description(self, name: str, text: str) -> str:
        text = text.strip()
        if len(text) > _MAX_DESCRIPTION or "\n" in text:
            self.add(
                name,
                f"description: {len(text)} characters over several lines: the model reads it in the handoff "
                f"tool; write one line of at most {_MAX_DESCRIPTION} characters",
            )
        return text

    def _overrides(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """The Settings fields this agent sets, and what it does not inherit (module docstring)."""
        overrides = {SETTING_OF[f]: v for f, v in values.items() if f in SETTING_OF}
        if isinstance(values.get("transfer_allowlist"), list):
            overrides["transfer_allowlist"] = ",".join(values["transfer_allowlist"])
        if values.get("greeting") == "":
            overrides["greeting_enabled"] = False
        overrides.setdefault("allow_cross_provider_fallback", False)
        mode = values.get("mode")
        if mode is not None and mode not in ("realtime", "cascade", "auto"):
            self.add(name, f'mode = {shown(mode)}: use "realtime", "cascade" or "auto"')
        azure = self.env.use_azure_openai
        if "provider" in values:
            if values["provider"] not in ("openai", "azure"):
                self.add(name, f'provider = {shown(values["provider"])}: use "openai" or "azure"')
            azure = values["provider"] == "azure"
            overrides["use_azure_openai"] = azure
        self._provider_fields(name, values, azure)
        key = self._key(name, values.get("api_key_env"), azure)
        if key is not None:
            overrides["azure_openai_api_key" if azure else "openai_api_key"] = key
        elif azure and self._other_resource(values.get("azure_endpoint")):
            overrides["azure_openai_api_key"] = None  # Entra ID: a key belongs to its own resource
        return overrides

    def _provider_fields(self, name: str, values: dict[str, Any], azure: bool) -> None:
        if not azure:
            for field in ("azure_endpoint", "azure_deployment"):
                if field in values:
                    self.add(
                        name,
                        f'{field} is set but the provider is "openai": add provider = "azure", or remove it',
                    )
            return
        if "realtime_model" in values:
            self.add(
                name,
                'realtime_model is an OpenAI model but the provider is "azure": name the Azure realtime '
                "deployment with azure_deployment",
            )
        needs = (
            (
                "azure_endpoint",
                self.env.azure_openai_endpoint,
                '"my-resource.openai.azure.com"',
                "AZURE_OPENAI_ENDPOINT",
            ),
            (
                "azure_deployment",
                self.env.azure_openai_deployment,
                '"gpt-realtime"',
                "AZURE_OPENAI_DEPLOYMENT",
            ),
        )
        for field, inherited, example, variable in needs:
            if not values.get(field, inherited):
                self.add(
                    name,
                    f'{field} is missing: the provider "azure" needs it, e.g. {field} = {example} '
                    f"(or {variable} in the environment)",
                )

    def _key(self, name: str, variable: str | None, azure: bool) -> Any:
        if variable is None:
            return None
        if not _VARIABLE_RE.match(variable):  # maybe the key itself: never shown
            self.add(
                name,
                "api_key_env must name an environment variable (letters, digits, '_'), not hold a key: "
                "put the key in the environment or .env and name its variable here",
            )
            return None
        secret = environment_secret(variable)
        if secret is None:
            kind = (
                "Azure OpenAI key (like AZURE_OPENAI_API_KEY)"
                if azure
                else "OpenAI key (like OPENAI_API_KEY)"
            )
            self.add(
                name,
                f"api_key_env = {shown(variable)}: the environment has no {variable}: set it, in the "
                f"environment or .env, to this agent's {kind}",
            )
        return secret

    def _other_resource(self, endpoint: str | None) -> bool:
        if not endpoint:
            return False
        try:
            return normalize_http_url(endpoint, name="azure_endpoint") != self.env.azure_openai_endpoint
        except ConfigError:
            return False  # reported when the settings are built

    def _settings(self, name: str, overrides: dict[str, Any], fields: set[str]) -> Settings | None:
        """The environment's settings with `overrides`, validated by Settings itself."""
        try:
            return Settings(_env_file=None, **{**self.env.model_dump(), **overrides})  # type: ignore[call-arg]
        except ValidationError as exc:
            problems = describe_errors(exc, Settings.model_fields)
        except ConfigError as exc:
            problems = exc.problems
        for problem in problems:
            if not problem.startswith("USE_AZURE_OPENAI=true needs"):  # said by _provider_fields
                self.add(name, self._in_file_terms(problem, fields))
        return None

    @staticmethod
    def _in_file_terms(problem: str, fields: set[str]) -> str:
        """A Settings message with the variables this agent set spelled as its fields."""
        for field in sorted(fields & set(SETTING_OF), key=lambda f: -len(SETTING_OF[f])):
            problem = re.sub(rf"\b{SETTING_OF[field].upper()}\b", field, problem)
        return problem

    # --- between agents ----------------------------------------------------------------------------
    def _cross_checks(self, tables: dict[str, dict[str, Any]], default: AgentSpec) -> None:
        names = [*tables, default.name]
        claimed: dict[str, str] = {}
        for name, table in tables.items():
            numbers = table.get("numbers")
            for number in numbers if isinstance(numbers, list) else []:
                if not isinstance(number, str):
                    continue
                first = claimed.setdefault(number, name)
                if first != name:
                    self.add(
                        name,
                        f"numbers: {shown(number)} is claimed by agents.{first} too: a number answers "
                        "with one agent; remove it from one of them",
                    )
            handoffs = table.get("handoffs")
            for target in handoffs if isinstance(handoffs, list) else []:
                if not isinstance(target, str):
                    continue
                if target == name:
                    self.add(name, f"handoffs: {shown(target)} is this agent itself: remove it")
                elif target not in names:
                    close = difflib.get_close_matches(target, names, n=1, cutoff=0.6)
                    hint = f'did you mean "{close[0]}"? ' if close else ""
                    self.add(
                        name,
                        f"handoffs: {shown(target)} is not an agent: {hint}the agents are {', '.join(names)}",
                    )


def json_name(name: str) -> str:
    """An agent's name as the problem shows it (quoted when it is not a bare TOML key)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else shown(name)
