"""Policy files (TOML) and the price book: valid input loads, every mistake names its file and field."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import data_snapshot

from comptroller.config import ConfigError, load_policy, scope_for
from comptroller.domain.budgets import ANY_SCOPE, Budget, Period
from comptroller.domain.money import usd_to_mc_half_up
from comptroller.domain.pricing import ModelPrice, TieredRate
from comptroller.domain.scopes import Level, scope_key
from comptroller.prices import PriceBook, UnknownModelError

AT = datetime(2025, 6, 1, tzinfo=UTC)


def _write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- load_policy ----------------------------------------------------------------------------------


def test_a_full_policy_loads_into_domain_values(tmp_path: Path) -> None:
    """Every section of a policy becomes caps, prices, aliases and budgets with exact decimals."""
    path = _write(tmp_path, """
namespace = "prod"
output_cap_tokens = 4096
ttl_s = 120
[output_caps]
"Programmer" = 2048
[aliases]
"ModelType.GPT_3_5_TURBO" = "gpt-3.5-turbo-16k"
[prices."local-llama"]
input_mtok = "0.10"
output_mtok = "0.30"
cache_read_mtok = "0.01"
max_output_tokens = 1000
[prices."tiered"]
input_mtok = {base = "1", tiers = [{start = 200000, price = "2"}, {start = 100, price = "1.5"}]}
output_mtok = "3"
[[budgets]]
level = "conversation"
limit_usd = "0.50"
period = "day"
timezone = "Europe/Paris"
alert_thresholds_pct = [90]
[[budgets]]
level = "agent"
tenant = "acme"
agent = "Programmer"
limit_mc = 250000
""")
    policy = load_policy(path)
    assert (policy.namespace, policy.ttl_s) == ("prod", 120)
    assert policy.caps().cap_for("Programmer") == 2048 and policy.caps().cap_for("CEO") == 4096
    prices = policy.price_overrides()
    assert prices["local-llama"].input_mtok == Decimal("0.10")
    assert prices["local-llama"].cache_read_mtok == Decimal("0.01")
    assert prices["local-llama"].max_output_tokens == 1000
    assert prices["local-llama"].source.startswith(str(path))
    assert prices["tiered"].input_mtok == TieredRate(Decimal("1"), ((100, Decimal("1.5")), (200000, Decimal("2"))))
    assert policy.aliases == {"ModelType.GPT_3_5_TURBO": "gpt-3.5-turbo-16k"}
    assert policy.budget_list() == [
        Budget(Level.CONVERSATION, ANY_SCOPE, usd_to_mc_half_up(Decimal("0.50")), period=Period.DAY,
               timezone="Europe/Paris", alert_thresholds_pct=(90,)),
        Budget(Level.AGENT, scope_key("prod", "acme", "Programmer"), 250000),
    ]


def test_no_path_gives_the_empty_policy() -> None:
    """load_policy(None) is the default policy: no budgets, prices or caps."""
    policy = load_policy(None)
    assert (policy.budget_list(), policy.price_overrides(), policy.aliases) == ([], {}, {})


@pytest.mark.parametrize(("text", "fields"), [
    ("ttl_s = -1", ["ttl_s"]),
    ("ttl_s = 100000", ["ttl_s"]),
    ("bogus = 1", ["bogus"]),
    ("[output_caps]\n\"P\" = 0", ["output_caps", "'P'"]),
    ("[[budgets]]\nlevel = \"galaxy\"\nlimit_usd = \"1\"", ["budgets.0.level"]),
    ("[[budgets]]\nlevel = \"agent\"\nlimit_usd = \"1\"\nperiod = \"fortnight\"", ["budgets.0.period"]),
    ("[[budgets]]\nlevel = \"agent\"\nlimit_usd = \"abc\"", ["limit_usd", "'abc'"]),
    ("[[budgets]]\nlevel = \"agent\"\nlimit_usd = \"-1\"", ["limit_usd"]),
    ("[[budgets]]\nlevel = \"agent\"\nlimit_mc = -5", ["budgets.0.limit_mc"]),
    ("[[budgets]]\nlevel = \"agent\"\nlimit_usd = \"1\"\nlimit_mc = 5", ["limit_usd", "limit_mc"]),
    ("[[budgets]]\nlevel = \"agent\"", ["limit_usd", "limit_mc"]),
    ("[[budgets]]\nlevel = \"agent\"\nlimit_mc = 5\nalert_thresholds_pct = [0]", ["alert thresholds"]),
    ("[[budgets]]\nlevel = \"agent\"\nlimit_mc = 5\ntimezone = \"Mars/Olympus\"", ["'Mars/Olympus'"]),
    ("[[budgets]]\nlevel = \"agent_conversation\"\nagent = \"a\"\nlimit_mc = 5", ["conversation"]),
    ("[prices.\"m\"]\ninput_mtok = \"-1\"\noutput_mtok = \"1\"", ["input_mtok"]),
    ("[prices.\"m\"]\ninput_mtok = \"NaN\"\noutput_mtok = \"1\"", ["input_mtok"]),
    ("[prices.\"m\"]\ninput_mtok = \"1\"", ["prices.m.output_mtok"]),
    ("[prices.\"m\"]\ninput_mtok = \"1\"\noutput_mtok = \"1\"\ncolour = \"red\"", ["prices.m.colour"]),
    ("[prices.\"m\"]\ninput_mtok = {base = \"1\", tiers = [{start = 5, price = \"x\"}]}\noutput_mtok = \"1\"",
     ["input_mtok", "'x'"]),
])
def test_invalid_policy_errors_name_file_and_field(tmp_path: Path, text: str, fields: list[str]) -> None:
    """Each invalid value is a ConfigError whose message starts with the file and names the field at fault."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for field in fields:
        assert field in message, (field, message)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing policy file is a ConfigError naming the path."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such policy file") as info:
        load_policy(path)
    assert str(path) in str(info.value)


def test_invalid_toml_is_named(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError naming the file and the parser's complaint."""
    path = _write(tmp_path, "x = [")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_policy(path)
    assert str(info.value).startswith(str(path))


def test_float_prices_keep_their_written_digits(tmp_path: Path) -> None:
    """A price written as a TOML float becomes the Decimal of its written digits, not of its binary value."""
    policy = load_policy(_write(tmp_path, "[prices.\"m\"]\ninput_mtok = 0.1\noutput_mtok = 0.3"))
    assert policy.price_overrides()["m"].input_mtok == Decimal("0.1")


@pytest.mark.parametrize(("level", "ids", "expected"), [
    (Level.NAMESPACE, {}, ANY_SCOPE),
    (Level.NAMESPACE, {"namespace": "n"}, "n"),
    (Level.TENANT, {}, ANY_SCOPE),
    (Level.TENANT, {"namespace": "n", "tenant": "t"}, "n|t"),
    (Level.AGENT, {"namespace": "n", "tenant": "t", "agent": "a"}, "n|t|a"),
    (Level.AGENT_CONVERSATION, {"namespace": "n", "tenant": "t", "agent": "a", "conversation": "c"}, "n|t|a|c"),
    (Level.CONVERSATION, {"namespace": "n", "tenant": "t", "conversation": "c|d"}, "n|t|c\\|d"),
    (Level.TASK, {"namespace": "n", "tenant": "t", "task": "k"}, "n|t|k"),
])
def test_scope_for_builds_the_key_or_the_default(level: Level, ids: dict[str, str], expected: str) -> None:
    """scope_for gives the level's key from all its ids, and '*' when no id is named."""
    assert scope_for(level, namespace=ids.get("namespace"), tenant=ids.get("tenant"), agent=ids.get("agent"),
                     conversation=ids.get("conversation"), task=ids.get("task")) == expected


# --- the price book -------------------------------------------------------------------------------


def test_unknown_model_names_the_closest_names_and_how_to_configure() -> None:
    """An unknown label is an UnknownModelError listing near names and both ways to price it."""
    with pytest.raises(UnknownModelError) as info:
        PriceBook().price("gpt-4o-minii", AT)
    error = info.value
    assert isinstance(error, LookupError)
    assert error.model == "gpt-4o-minii"
    assert "gpt-4o-mini" in error.suggestions
    message = str(error)
    for part in ("'gpt-4o-minii'", "gpt-4o-mini", "[aliases]", "[prices.\"gpt-4o-minii\"]", "input_mtok"):
        assert part in message, part


def test_unknown_model_without_near_names_still_says_how_to_configure() -> None:
    """A label like nothing known gets no suggestions but the same instructions."""
    with pytest.raises(UnknownModelError) as info:
        PriceBook().resolve("qqqqqqqqqqqqqqqq")
    assert info.value.suggestions == []
    assert "Closest" not in str(info.value) and "[aliases]" in str(info.value)


def test_suggestions_include_configured_names() -> None:
    """Configured overrides and aliases are suggested too."""
    book = PriceBook(overrides={"my-local-llama": ModelPrice("my-local-llama", Decimal(0), Decimal(0))})
    with pytest.raises(UnknownModelError) as info:
        book.resolve("my-local-lama")
    assert "my-local-llama" in info.value.suggestions


def test_alias_resolves_to_the_target_price() -> None:
    """An alias (and a chain of them) prices a label as its target model."""
    book = PriceBook(aliases={"ModelType.GPT_4O": "chatgpt", "chatgpt": "gpt-4o"})
    assert book.resolve("ModelType.GPT_4O") == "gpt-4o"
    assert book.price("ModelType.GPT_4O", AT) == PriceBook().price("gpt-4o", AT)


def test_alias_to_an_unknown_model_names_the_target() -> None:
    """An alias whose target has no price is an UnknownModelError about the target."""
    with pytest.raises(UnknownModelError) as info:
        PriceBook(aliases={"x": "not-a-model-zzz"}).resolve("x")
    assert info.value.model == "not-a-model-zzz"


@pytest.mark.parametrize("aliases", [{"a": "a"}, {"a": "b", "b": "a"},
                                     {f"a{i}": f"a{i + 1}" for i in range(20)}])
def test_alias_cycles_and_overlong_chains_are_errors(aliases: dict[str, str]) -> None:
    """A cyclic alias chain, or one longer than 8 hops, is a ValueError naming the label."""
    label = next(iter(aliases))
    with pytest.raises(ValueError, match=f"alias chain from '{label}'"):
        PriceBook(aliases=aliases).resolve(label)


def test_override_replaces_the_genai_price_and_prices_local_models() -> None:
    """A configured price wins over genai-prices for a known id, and prices an id genai-prices lacks."""
    replaced = ModelPrice("gpt-4o", input_mtok=Decimal("1"), output_mtok=Decimal("2"), source="test")
    local = ModelPrice("llama-local", input_mtok=Decimal("0"), output_mtok=Decimal("0"), source="test")
    book = PriceBook(overrides={"gpt-4o": replaced, "llama-local": local}, aliases={"llama": "llama-local"})
    assert book.price("gpt-4o", AT) == replaced
    assert book.price("llama", AT) == local


def test_with_config_layers_on_top() -> None:
    """with_config keeps the book's overrides and aliases and adds (or replaces) the given ones."""
    first = ModelPrice("m1", Decimal(1), Decimal(1))
    book = PriceBook(overrides={"m1": first}, aliases={"one": "m1"})
    second = ModelPrice("m2", Decimal(2), Decimal(2))
    layered = book.with_config(overrides={"m2": second}, aliases={"two": "m2"})
    assert (layered.price("one", AT), layered.price("two", AT)) == (first, second)


def test_genai_price_carries_its_rates_source_and_context_window() -> None:
    """A genai-prices model converts with its exact rates, the package version as source, and its window."""
    _, info = data_snapshot.get_snapshot().find_provider_model("gpt-4o", None, None, None)
    raw = info.get_prices(AT)
    price = PriceBook().price("gpt-4o", AT)
    assert (price.input_mtok, price.output_mtok, price.cache_read_mtok) == (
        raw.input_mtok, raw.output_mtok, raw.cache_read_mtok)
    assert price.source.startswith("genai-prices ")
    assert price.context_window == info.context_window
