"""The agents file (relay/agents/): the example loads; without AGENTS_FILE the environment is the one
agent; what an agent inherits; every problem named with the file, the agent, the field and the fix;
the holder's reload (a valid file swaps, an invalid one is refused with one log line)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from relay.agents import AgentsHolder, load_agents
from relay.config import Settings
from relay.errors import ConfigError
from tests.conftest import make_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "agents.toml"


def write(tmp_path: Path, text: str, name: str = "agents.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems_of(settings: Settings) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_agents(settings)
    assert str(caught.value).startswith("Invalid agents file: ")
    return caught.value.problems


def test_without_agents_file_the_environment_is_the_one_agent() -> None:
    settings = make_settings()
    book = load_agents(settings)
    assert book.names == ("default",) and book.path is None
    assert book.default.settings is settings and book.default.source == "environment"
    assert book.default.tools is None and book.default.handoffs == () and book.default.numbers == ()
    assert book.for_number("+15550100001") is book.default and book.get("default") is book.default


def test_the_example_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRAXIS_AZURE_KEY", "praxis-key")
    env = make_settings(
        agents_file=str(EXAMPLE),
        openai_voice="ash",
        azure_openai_api_key="env-azure-key",
        allow_cross_provider_fallback=True,
        vad_threshold=0.7,
    )
    book = load_agents(env)
    assert book.names == ("support", "praxis", "default") and book.path == EXAMPLE
    support, praxis = book.get("support"), book.get("praxis")
    assert support is not None and praxis is not None
    assert book.default.source == "environment" and book.default.settings is env
    assert book.for_number("+15550100001") is support and book.for_number("+4930120000") is praxis
    assert book.for_number("+1 555 010 0001") is support  # layout characters are not digits
    assert book.for_number("+15559999999") is book.default

    s = support.settings
    assert not s.use_azure_openai and s.openai_api_key is not None
    assert s.openai_api_key.get_secret_value() == "sk-test"  # the environment's key
    assert s.openai_voice == "marin" and s.transcription_language == "en" and s.vad_threshold == 0.7
    assert s.transfer_targets == {"front-desk": "+15550100009", "+15550100009": "+15550100009"}
    assert "{caller}" in s.instructions and "\n" not in s.instructions
    assert support.tools == ("end_call", "transfer_call") and support.handoffs == ("praxis",)
    assert support.description.startswith("Customer support")
    assert not s.allow_cross_provider_fallback  # never inherited from the environment

    p = praxis.settings
    assert p.use_azure_openai and p.azure_openai_endpoint == "https://praxis-swedencentral.openai.azure.com"
    assert p.azure_openai_deployment == "gpt-realtime" and p.relay_mode == "auto" and p.record_calls
    assert p.azure_openai_api_key is not None and p.azure_openai_api_key.get_secret_value() == "praxis-key"
    assert p.openai_voice == "alloy" and p.transcription_language == "de"
    assert p.azure_openai_chat_deployment == "gpt-4o-mini" and not p.allow_cross_provider_fallback
    assert praxis.handoffs == ("support",) and praxis.tools == ("end_call",)
    assert "PRAXIS_AZURE_KEY" not in repr(praxis) and "praxis-key" not in repr(praxis)


def test_what_an_agent_inherits_from_the_environment(tmp_path: Path) -> None:
    """A key belongs to its resource; the cross-provider fallback is the agent's own decision."""
    path = write(
        tmp_path,
        """
        [agents.default]
        greeting = ""
        [agents.same]
        numbers = ["+15550100001"]
        [agents.sweden]
        azure_endpoint = "https://sweden.openai.azure.com/"
        [agents.open]
        provider = "openai"
        allow_cross_provider_fallback = true
        """,
    )
    env = make_settings(
        agents_file=path,
        use_azure_openai=True,
        azure_openai_endpoint="us.openai.azure.com",
        azure_openai_deployment="gpt-realtime",
        azure_openai_api_key="us-key",
        allow_cross_provider_fallback=True,
    )
    book = load_agents(env)
    assert book.names == ("default", "same", "sweden", "open")
    assert book.default.source == "file" and book.for_number("+15559999999") is book.default
    assert not book.default.settings.greeting_enabled  # greeting = "": no greeting
    same, sweden, other = (book.agents[n].settings for n in ("same", "sweden", "open"))
    assert same.use_azure_openai and same.azure_openai_api_key is not None
    assert same.azure_openai_api_key.get_secret_value() == "us-key"
    assert not same.allow_cross_provider_fallback
    assert sweden.azure_openai_endpoint == "https://sweden.openai.azure.com"
    assert sweden.azure_openai_api_key is None  # Entra ID, not the US resource's key
    assert sweden.azure_openai_deployment == "gpt-realtime"
    assert not other.use_azure_openai and other.allow_cross_provider_fallback
    assert other.openai_api_key is not None


def test_every_problem_names_the_file_the_agent_the_field_and_the_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        oops = 1
        [agents.sales]
        numbers = ["+1 (555) 010-0002", "+15550100001"]
        provider = "azur"
        api_key = "sk-very-secret"
        instrucions = "Sell."
        OPENAI_VOICE = "ash"
        vad_threshold = 0.2
        record = "yes"
        tools = ["web_serch", "handoff", "nomodule_here:foo", "json:loads"]
        handoffs = ["sales", "suport"]
        [agents.support]
        numbers = ["+15550100001"]
        api_key_env = "NO_SUCH_KEY_VARIABLE"
        language = "german"
        [agents.x]
        provider = "openai"
        azure_deployment = "d"
        mode = "sometimes"
        [agents.y]
        provider = "azure"
        [agents.z]
        transfer_allowlist = ["sales=front desk"]
        api_key_env = "sk-proj-abcdef"
        """,
    )
    problems = problems_of(make_settings(agents_file=path))
    expected = [
        "oops: not part of an agents file",
        "agents.sales.api_key: secrets never live in the agents file: put the key in an environment "
        'variable (or .env) and name that variable here, e.g. api_key_env = "SALES_OPENAI_API_KEY"',
        "agents.sales.instrucions is not an agent field: did you mean instructions?",
        "agents.sales.OPENAI_VOICE is not an agent field: use voice",
        "agents.sales.vad_threshold is not set per agent: set VAD_THRESHOLD in the environment",
        'agents.sales.record = "yes": use true or false',
        'agents.sales.numbers: "+1 (555) 010-0002" is not an E.164 number: write "+15550100002"',
        'agents.sales.provider = "azur": use "openai" or "azure"',
        'agents.sales.tools: "web_serch" is not a tool: did you mean "web_search"?',
        'agents.sales.tools: "handoff" is offered by handoffs',
        'agents.sales.tools: "nomodule_here:foo": cannot import nomodule_here',
        'agents.sales.tools: "json:loads": json registers no tool named loads',
        'agents.support.api_key_env = "NO_SUCH_KEY_VARIABLE": the environment has no NO_SUCH_KEY_VARIABLE: '
        "set it, in the environment or .env, to this agent's OpenAI key",
        "agents.support.language='german' is not a language code: use an ISO 639-1 code such as 'de'",
        'agents.x.mode = "sometimes": use "realtime", "cascade" or "auto"',
        'agents.x.azure_deployment is set but the provider is "openai": add provider = "azure", or remove it',
        'agents.y.azure_endpoint is missing: the provider "azure" needs it, e.g. azure_endpoint = '
        '"my-resource.openai.azure.com" (or AZURE_OPENAI_ENDPOINT in the environment)',
        'agents.y.azure_deployment is missing: the provider "azure" needs it',
        "agents.z.api_key_env must name an environment variable (letters, digits, '_'), not hold a key",
        "agents.z.transfer_allowlist entry 'sales=front desk' is not a number or name=number",
        'agents.sales.handoffs: "sales" is this agent itself: remove it',
        'agents.sales.handoffs: "suport" is not an agent: did you mean "support"?',
        'agents.support.numbers: "+15550100001" is claimed by agents.sales too: a number answers '
        "with one agent",
    ]
    for want in expected:
        assert sum(p.startswith(f"{path}: {want}") for p in problems) == 1, (want, problems)
    assert len(problems) == len(expected), problems
    assert not any("sk-very-secret" in p or "sk-proj-abcdef" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[agents.a]\nnumbers = [\n", "not valid TOML: "),
        ('[agents.a]\nvoice = "x"\nvoice = "y"\n', "not valid TOML: Cannot overwrite a value (at line 3"),
        ("title = 'x'\n", "no agents: add an [agents.NAME] table for each agent"),
        ('[agents]\nsales = "x"\n', 'agents.sales = "x": an agent is a table'),
        ('[agents."front desk"]\nvoice = "x"\n', 'agents."front desk": an agent\'s name is a letter'),
    ],
)
def test_a_file_that_is_not_an_agents_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    problems = problems_of(make_settings(agents_file=path))
    assert any(p.startswith(f"{path}: {problem}") for p in problems), problems


def test_a_setting_check_speaks_of_the_field(tmp_path: Path) -> None:
    """Settings' own validators run on the agent's settings; their messages name the field."""
    path = write(
        tmp_path,
        """
        [agents.a]
        provider = "azure"
        azure_endpoint = "ftp://x"
        azure_deployment = "d"
        post_call_webhook_url = "https://crm.example.com/hooks"
        """,
    )
    (problem,) = problems_of(make_settings(agents_file=path))
    assert problem.startswith(f"{path}: agents.a.azure_endpoint='ftp://x' is not a valid URL"), problem
    path = write(tmp_path, '[agents.a]\npost_call_webhook_url = "https://crm.example.com/hooks"\n')
    (problem,) = problems_of(make_settings(agents_file=path))
    assert problem.startswith(
        f"{path}: agents.a.post_call_webhook_url is set but POST_CALL_WEBHOOK_SECRET is not"
    ), problem


def test_a_user_tool_is_named_module_colon_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "agent_tools_for_test.py").write_text(
        textwrap.dedent(
            '''
            from relay.tools import ToolContext, tool


            @tool
            async def agents_test_lookup(ctx: ToolContext, order_id: str) -> str:
                """Look up an order."""
                return "shipped"
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, '[agents.a]\ntools = ["end_call", "agent_tools_for_test:agents_test_lookup"]\n')
    agent = load_agents(make_settings(agents_file=path)).agents["a"]
    assert agent.tools == ("end_call", "agents_test_lookup")
    assert agent.settings.tool_modules == ["agent_tools_for_test"]  # its registry gets the module
    path = write(tmp_path, '[agents.a]\ntools = ["agent_tools_for_test:order_statu"]\n')
    (problem,) = problems_of(make_settings(agents_file=path))
    assert (
        "agent_tools_for_test registers no tool named order_statu (it registers agents_test_lookup" in problem
    )


# --------------------------------------------------------------------------- reload


def test_reload_swaps_a_valid_file_and_keeps_the_old_agents_on_an_invalid_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, '[agents.support]\nnumbers = ["+15550100001"]\nvoice = "ash"\n')
    holder = AgentsHolder(make_settings(agents_file=path))
    first = holder.book
    in_call = first.for_number("+15550100001")  # a call in progress holds its spec
    assert in_call.settings.openai_voice == "ash"

    write(tmp_path, '[agents.support]\nnumbers = ["+15550100001"]\nvoice = "coral"\n[agents.sales]\n')
    caplog.clear()
    assert holder.reload() is True
    assert holder.book is not first and holder.book.names == ("support", "sales", "default")
    assert holder.book.for_number("+15550100001").settings.openai_voice == "coral"
    assert in_call.settings.openai_voice == "ash"  # unchanged for the call that has it
    assert [r.getMessage() for r in caplog.records if r.name == "relay.agents"] == [
        f"agents: reloaded {path}: support, sales, default"
    ]

    good = holder.book
    write(tmp_path, '[agents.support]\nprovider = "azur"\nvoise = "x"\n')
    caplog.clear()
    assert holder.reload() is False
    assert holder.book is good
    (record,) = [r for r in caplog.records if r.name == "relay.agents"]
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert message.startswith(f"agents: {path} refused, keeping the agents support, sales, default: ")
    assert 'agents.support.provider = "azur"' in message and "did you mean voice?" in message

    Path(path).unlink()
    assert holder.reload() is False and holder.book is good
    assert "cannot read the agents file (No such file or directory)" in caplog.records[-1].getMessage()


def test_reload_without_agents_file_changes_nothing() -> None:
    holder = AgentsHolder(make_settings())
    book = holder.book
    assert holder.reload() is False and holder.book is book


def test_api_key_env_reads_the_environment_then_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variable an agent names is looked up like a setting: the environment first, then `.env`,
    its name in any case; the key is never in the file, the spec's repr or a problem."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SALES_OPENAI_KEY", raising=False)
    (tmp_path / ".env").write_text("sales_openai_key=sk-from-dotenv\n")
    path = write(tmp_path, '[agents.sales]\napi_key_env = "SALES_OPENAI_KEY"\n')
    sales = load_agents(make_settings(agents_file=path)).agents["sales"]
    assert sales.api_key_env == "SALES_OPENAI_KEY" and sales.settings.openai_api_key is not None
    assert sales.settings.openai_api_key.get_secret_value() == "sk-from-dotenv"
    monkeypatch.setenv("SALES_OPENAI_KEY", "sk-from-environment")
    sales = load_agents(make_settings(agents_file=path)).agents["sales"]
    assert sales.settings.openai_api_key is not None
    assert sales.settings.openai_api_key.get_secret_value() == "sk-from-environment"
    assert "sk-from" not in repr(sales)
    monkeypatch.setenv("SALES_OPENAI_KEY", " ")  # empty in the environment: unset, as for a setting
    (problem,) = problems_of(make_settings(agents_file=path))
    assert "the environment has no SALES_OPENAI_KEY" in problem
