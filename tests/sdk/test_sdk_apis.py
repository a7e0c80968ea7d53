"""Every paid API through the wrapped official clients, against a stub provider on loopback.

Costs are computed by hand from the usage the stub reports and the policy's round per-token
rates (``RATES``), never read back from the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel
from sdk_kit import CAP, MODEL, comptroller_with, sdk_policy
from sdk_stub import ApiStub

from comptroller.sdk import BudgetExceededError, Comptroller, UnmeteredCallError

PRICE = {"input_mtok": "1000", "output_mtok": "2000", "cache_read_mtok": "500", "cache_write_mtok": "1250",
         "cache_write_1h_mtok": "2000"}
RATES = {"input": 100, "output": 200, "cache_read": 50, "cache_write": 125, "cache_write_1h": 200}  # mc per token
CHAT = [{"role": "user", "content": "Name five colours."}]


class Colours(BaseModel):
    """A structured answer for the parse methods."""

    names: list[str]


def meter(tmp_path: Path, limit_mc: int | None = None) -> Comptroller:
    """A Comptroller pricing MODEL at RATES, with a tenant budget of ``limit_mc`` if given."""
    budgets = [] if limit_mc is None else [{"level": "tenant", "tenant": "acme", "limit_mc": limit_mc}]
    return comptroller_with(tmp_path, sdk_policy(prices={MODEL: PRICE}, budgets=budgets))


def clients(comptroller: Comptroller, stub: ApiStub, **wrap: Any) -> dict[str, Any]:
    """The four official clients pointed at the stub, wrapped."""
    return {"openai": comptroller.wrap(openai.OpenAI(base_url=stub.base_url, api_key="k", max_retries=0), **wrap),
            "anthropic": comptroller.wrap(anthropic.Anthropic(base_url=stub.url, api_key="k", max_retries=0), **wrap),
            "async_openai": comptroller.wrap(openai.AsyncOpenAI(base_url=stub.base_url, api_key="k", max_retries=0)),
            "async_anthropic": comptroller.wrap(anthropic.AsyncAnthropic(base_url=stub.url, api_key="k",
                                                                         max_retries=0))}


def cost(input_tokens: int, output_tokens: int, read: int = 0, write: int = 0, write_1h: int = 0) -> int:
    """The hand-computed cost: each input bucket at its rate, output (reasoning included) at the output rate."""
    uncached = input_tokens - read - write
    return (uncached * RATES["input"] + read * RATES["cache_read"] + (write - write_1h) * RATES["cache_write"]
            + write_1h * RATES["cache_write_1h"] + output_tokens * RATES["output"])


def charged(comptroller: Comptroller) -> list[int]:
    """The settled cost of every call so far, in order."""
    return [r.cost_mc for r in comptroller.engine.store.usage_records()]


def enter(manager: Any) -> Any:
    """Enter a stream manager and read its stream to the end (what a caller of .stream(...) does)."""
    with manager as stream:
        return list(stream)


PAID: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "chat.completions.create": ("openai", lambda c: c.chat.completions.create(model=MODEL, messages=CHAT)),
    "chat.completions.create stream": ("openai", lambda c: list(c.chat.completions.create(
        model=MODEL, messages=CHAT, stream=True))),
    "chat.completions.parse": ("openai", lambda c: c.chat.completions.parse(model=MODEL, messages=CHAT,
                                                                            response_format=Colours)),
    "chat.completions.stream": ("openai", lambda c: enter(c.chat.completions.stream(model=MODEL, messages=CHAT))),
    "beta.chat.completions.parse": ("openai", lambda c: c.beta.chat.completions.parse(model=MODEL, messages=CHAT)),
    "responses.create": ("openai", lambda c: c.responses.create(model=MODEL, input="Name five colours.")),
    "responses.create stream": ("openai", lambda c: list(c.responses.create(model=MODEL, input="hi", stream=True))),
    "responses.parse": ("openai", lambda c: c.responses.parse(model=MODEL, input="hi", text_format=Colours)),
    "responses.stream": ("openai", lambda c: enter(c.responses.stream(model=MODEL, input="hi"))),
    "embeddings.create": ("openai", lambda c: c.embeddings.create(model=MODEL, input=["a", "b"])),
    "completions.create": ("openai", lambda c: c.completions.create(model=MODEL, prompt="Say hi")),
    "messages.create": ("anthropic", lambda c: c.messages.create(model=MODEL, max_tokens=64, messages=CHAT)),
    "messages.create stream": ("anthropic", lambda c: list(c.messages.create(model=MODEL, max_tokens=64,
                                                                               messages=CHAT, stream=True))),
    "messages.stream": ("anthropic", lambda c: enter(c.messages.stream(model=MODEL, max_tokens=64, messages=CHAT))),
    "messages.parse": ("anthropic", lambda c: c.messages.parse(model=MODEL, max_tokens=64, messages=CHAT)),
    "beta.messages.create": ("anthropic", lambda c: c.beta.messages.create(model=MODEL, max_tokens=64,
                                                                           messages=CHAT)),
}


@pytest.mark.parametrize("name", sorted(PAID))
def test_zero_budget_refuses_every_paid_method_before_sending(name: str, apis: ApiStub, tmp_path: Path) -> None:
    """With a $0 tenant budget every paid method raises BudgetExceededError and the stub sees no request."""
    comptroller = meter(tmp_path, limit_mc=0)
    package, call = PAID[name]
    with pytest.raises(BudgetExceededError):
        call(clients(comptroller, apis)[package])
    assert apis.control.requests == []
    assert charged(comptroller) == []


def test_zero_budget_refuses_async_methods_before_sending(apis: ApiStub, tmp_path: Path) -> None:
    """The async clients' create, parse and stream helpers are refused the same way."""
    wrapped = clients(meter(tmp_path, limit_mc=0), apis)
    aoai, aant = wrapped["async_openai"], wrapped["async_anthropic"]
    calls = [lambda: aoai.responses.create(model=MODEL, input="hi"),
             lambda: aoai.embeddings.create(model=MODEL, input="a"),
             lambda: aoai.chat.completions.parse(model=MODEL, messages=CHAT),
             lambda: aant.messages.create(model=MODEL, max_tokens=8, messages=CHAT)]
    for call in calls:
        with pytest.raises(BudgetExceededError):
            asyncio.run(call())
    with pytest.raises(BudgetExceededError):
        aant.messages.stream(model=MODEL, max_tokens=8, messages=CHAT)
    with pytest.raises(BudgetExceededError):
        aoai.responses.stream(model=MODEL, input="hi")
    assert apis.control.requests == []


def test_chat_settles_cached_and_reasoning_tokens_exactly(apis: ApiStub, tmp_path: Path) -> None:
    """Chat: cached tokens are inside prompt_tokens, reasoning inside completion_tokens; each priced once."""
    comptroller = meter(tmp_path)
    apis.control.input_tokens, apis.control.cache_read_tokens, apis.control.reasoning_tokens = 50, 12, 3
    openai_client = clients(comptroller, apis)["openai"]
    openai_client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=CAP * 4)
    with openai_client.chat.completions.stream(model=MODEL, messages=CHAT) as stream:
        final = stream.get_final_completion()
    assert final.usage is not None and final.usage.completion_tokens == 5 + 3
    assert apis.control.requests[0][1]["max_tokens"] == CAP
    assert apis.control.requests[1][1]["stream_options"] == {"include_usage": True}
    assert charged(comptroller) == [cost(50, 5 + 3, read=12)] * 2


def test_responses_settle_from_usage_and_the_completed_event(apis: ApiStub, tmp_path: Path) -> None:
    """Responses: input_tokens with cached_tokens inside, output_tokens with reasoning inside; streams too."""
    comptroller = meter(tmp_path)
    apis.control.input_tokens, apis.control.cache_read_tokens, apis.control.reasoning_tokens = 64, 16, 4
    client = clients(comptroller, apis)["openai"]
    response = client.responses.create(model=MODEL, input="Name five colours.", max_output_tokens=500)
    events = list(client.responses.create(model=MODEL, input="again", stream=True))
    with client.responses.stream(model=MODEL, input="and again") as stream:
        texts = list(stream.text_stream) if hasattr(stream, "text_stream") else []
        final = stream.get_final_response()
    assert response.output_text == "w0 w1 w2 w3 w4" and events[-1].type == "response.completed"
    assert final.usage is not None and final.usage.output_tokens == 9 and "".join(texts).split() == ["w0", "w1",
                                                                                                    "w2", "w3", "w4"]
    assert apis.control.requests[0][1]["max_output_tokens"] == CAP
    assert charged(comptroller) == [cost(64, 5 + 4, read=16)] * 3


def test_embeddings_and_legacy_completions_settle_exactly(apis: ApiStub, tmp_path: Path) -> None:
    """Embeddings are input only; legacy completions are input plus output."""
    comptroller = meter(tmp_path)
    apis.control.input_tokens = 21
    client = clients(comptroller, apis)["openai"]
    client.embeddings.create(model=MODEL, input=["a", "b", "c"])
    client.completions.create(model=MODEL, prompt="Say hi", max_tokens=100)
    assert apis.control.requests[1][1]["max_tokens"] == CAP
    assert charged(comptroller) == [cost(21, 0), cost(21, 5)]


def test_messages_settle_cache_reads_and_both_write_ttls(apis: ApiStub, tmp_path: Path) -> None:
    """Messages: input_tokens excludes cache reads and writes; 5-minute and 1-hour writes priced apart; streams too."""
    comptroller = meter(tmp_path)
    control = apis.control
    control.input_tokens, control.cache_read_tokens, control.cache_write_tokens, control.cache_write_1h_tokens = (
        90, 20, 30, 10)
    client = clients(comptroller, apis)["anthropic"]
    message = client.messages.create(model=MODEL, max_tokens=CAP * 2, messages=CHAT)
    list(client.messages.create(model=MODEL, max_tokens=64, messages=CHAT, stream=True))
    with client.messages.stream(model=MODEL, max_tokens=64, messages=CHAT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert message.usage.input_tokens == 90 - 20 - 30 and text.split() == ["w0", "w1", "w2", "w3", "w4"]
    assert final.usage.output_tokens == 5 and control.requests[0][1]["max_tokens"] == CAP
    assert charged(comptroller) == [cost(90, 5, read=20, write=30, write_1h=10)] * 3


def test_async_streams_settle_from_their_final_usage(apis: ApiStub, tmp_path: Path) -> None:
    """The async clients' stream helpers settle once, from the final usage event."""
    comptroller = meter(tmp_path)
    apis.control.input_tokens, apis.control.cache_read_tokens = 30, 6
    wrapped = clients(comptroller, apis)

    async def run() -> None:
        async with wrapped["async_openai"].responses.stream(model=MODEL, input="hi") as stream:
            await stream.get_final_response()
        async with wrapped["async_anthropic"].messages.stream(model=MODEL, max_tokens=64, messages=CHAT) as stream:
            async for _ in stream:
                pass
        chunks = await wrapped["async_openai"].chat.completions.create(model=MODEL, messages=CHAT, stream=True)
        async for _ in chunks:
            pass

    asyncio.run(run())
    assert charged(comptroller) == [cost(30, 5, read=6)] * 3


def test_a_stream_left_early_settles_what_was_seen(apis: ApiStub, tmp_path: Path) -> None:
    """A helper stream left after two events settles the input bound and the output seen, below its ceiling."""
    comptroller = meter(tmp_path)
    apis.control.words = 20
    client = clients(comptroller, apis)["anthropic"]
    with client.messages.stream(model=MODEL, max_tokens=64, messages=CHAT) as stream:
        for _, _event in zip(range(3), stream, strict=False):
            pass
    (record,) = comptroller.engine.store.usage_records()
    assert record.usage.output_tokens < CAP and record.cost_mc < record.ceiling_mc


def test_n_choices_reserve_n_outputs_and_send_each_its_share(apis: ApiStub, tmp_path: Path) -> None:
    """n=4 reserves four output bounds (three more than n=1); each choice is sent the agent's cap."""
    comptroller = meter(tmp_path)
    client = clients(comptroller, apis)["openai"]
    client.chat.completions.create(model=MODEL, messages=CHAT, n=1)
    client.chat.completions.create(model=MODEL, messages=CHAT, n=4)
    one, four = comptroller.engine.store.usage_records()
    assert [body["max_tokens"] for _, body in apis.control.requests] == [CAP, CAP]
    assert four.ceiling_mc - one.ceiling_mc == 3 * CAP * RATES["output"]


def test_an_output_limit_in_extra_body_is_lowered_too(apis: ApiStub, tmp_path: Path) -> None:
    """A max_tokens smuggled in extra_body cannot lift the admitted output bound."""
    comptroller = meter(tmp_path)
    clients(comptroller, apis)["openai"].chat.completions.create(model=MODEL, messages=CHAT,
                                                                 extra_body={"max_tokens": 100_000})
    assert apis.control.requests[0][1]["max_tokens"] == CAP


def test_unmetered_methods_raise_until_allowed_by_name(apis: ApiStub, tmp_path: Path) -> None:
    """images.generate raises UnmeteredCallError and sends nothing (an empty batch is refused too); allowed by
    name, it passes."""
    comptroller = meter(tmp_path)
    wrapped = clients(comptroller, apis)
    with pytest.raises(UnmeteredCallError, match=r"images\.generate"):
        wrapped["openai"].images.generate(prompt="a cat", model="gpt-image-1")
    with pytest.raises(ValueError, match="requests must be a non-empty array"):  # batches: test_sdk_batches.py
        wrapped["anthropic"].messages.batches.create(requests=[])
    assert apis.control.requests == []
    allowed = clients(comptroller, apis, allow_unmetered={"images.generate"})["openai"]
    allowed.images.generate(prompt="a cat", model="gpt-image-1")
    allowed.models.list()  # free: passes without being allowed
    assert [path for path, _ in apis.control.requests] == ["/v1/images/generations", "/v1/models"]
    assert charged(comptroller) == []


def test_a_method_no_list_names_is_refused(apis: ApiStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A method a future SDK adds (simulated) raises UnmeteredCallError saying it is not classified."""
    completions_class = type(openai.OpenAI(api_key="k").chat.completions)
    monkeypatch.setattr(completions_class, "brand_new", lambda self, **kw: self._post("/chat/brand_new"),
                        raising=False)
    wrapped = clients(meter(tmp_path), apis)["openai"]
    with pytest.raises(UnmeteredCallError, match="not classified"):
        wrapped.chat.completions.brand_new(model=MODEL)
    assert apis.control.requests == []


def test_server_tools_billed_per_call_are_refused(apis: ApiStub, tmp_path: Path) -> None:
    """Responses web search and background mode, and Anthropic web search, raise before anything is reserved."""
    comptroller = meter(tmp_path)
    wrapped = clients(comptroller, apis)
    with pytest.raises(ValueError, match="web_search"):
        wrapped["openai"].responses.create(model=MODEL, input="news?", tools=[{"type": "web_search"}])
    with pytest.raises(UnmeteredCallError, match="background"):
        wrapped["openai"].responses.create(model=MODEL, input="long job", background=True)
    with pytest.raises(ValueError, match="web_search"):
        wrapped["anthropic"].messages.create(model=MODEL, max_tokens=8, messages=CHAT,
                                             tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert apis.control.requests == []
    assert sum(a.reserved_mc for a in comptroller.engine.store.accounts()) == 0


def test_not_given_arguments_and_pydantic_formats_are_read_as_the_client_sends_them(apis: ApiStub,
                                                                                   tmp_path: Path) -> None:
    """NOT_GIVEN / omit values are neither bounded nor forwarded as limits; a parse format class is bounded."""
    comptroller = meter(tmp_path)
    client = clients(comptroller, apis)["openai"]
    client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=openai.NOT_GIVEN, temperature=openai.omit)
    client.responses.parse(model=MODEL, input="colours?", text_format=Colours, max_output_tokens=openai.NOT_GIVEN)
    (_, chat), (_, response) = apis.control.requests
    assert chat["max_tokens"] == CAP and "temperature" not in chat
    assert response["max_output_tokens"] == CAP and response["text"]["format"]["type"] == "json_schema"
    assert len(charged(comptroller)) == 2


def test_bad_input_is_refused_before_anything_is_reserved(apis: ApiStub, tmp_path: Path) -> None:
    """A missing model, NaN or Infinity in the body, or an audio part raise a clear error; nothing stays
    reserved and nothing is sent."""
    comptroller = meter(tmp_path)
    client = clients(comptroller, apis)["openai"]
    with pytest.raises(TypeError, match="'model'"):
        client.chat.completions.create(messages=CHAT)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"default": float("nan")}}}
    with pytest.raises(ValueError, match="standard JSON"):
        client.chat.completions.create(model=MODEL, messages=CHAT, tools=[tool])
    with pytest.raises(ValueError, match="JSON"):  # the client's own encoder refuses it: the hold is released
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=float("inf"))
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]
    with pytest.raises(ValueError, match="input_audio"):
        client.chat.completions.create(model=MODEL, messages=audio)
    assert apis.control.requests == [] and list(comptroller.engine.store.usage_records()) == []
    assert sum(a.reserved_mc for a in comptroller.engine.store.accounts()) == 0


def test_a_served_model_is_priced_and_usage_above_the_bound_is_flagged(apis: ApiStub, tmp_path: Path) -> None:
    """Another served model is charged at its price (a dated snapshot is not); usage above the bound is
    charged in full and recorded as an anomaly."""
    big = {"input_mtok": "3000", "output_mtok": "6000"}  # 300 and 600 mc per token
    comptroller = comptroller_with(tmp_path, sdk_policy(prices={MODEL: PRICE, "big-model": big}))
    client = clients(comptroller, apis)["openai"]
    apis.control.served_model = "big-model"
    client.chat.completions.create(model=MODEL, messages=CHAT)
    list(client.responses.create(model=MODEL, input="hi", stream=True))
    apis.control.served_model = f"{MODEL}-2024-08-06"
    client.chat.completions.create(model=MODEL, messages=CHAT)
    apis.control.served_model, apis.control.input_tokens = None, 1_000_000
    client.chat.completions.create(model=MODEL, messages=CHAT)
    assert charged(comptroller) == [40 * 300 + 5 * 600] * 2 + [cost(40, 5), cost(1_000_000, 5)]
    assert len(comptroller.engine.store.events("served_model")) == 2
    anomalies = comptroller.engine.store.events("usage_anomaly")  # the stub's fixed 40 also tops a short "hi"
    (flagged,) = [a for a in anomalies if a.detail["reported_tokens"] == 1_000_000]
    assert flagged.code == "input_above_bound" and flagged.detail["bound_tokens"] < 1_000_000
