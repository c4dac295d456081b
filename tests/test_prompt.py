import pytest

from hllama.aliases.resolve import Resolved
from hllama.conversation import Message
from hllama.engine.prompt import JSON_INSTRUCTION, build_prompt, conversation, plain_format
from hllama.errors import ChatTemplateError, PromptTooLong
from hllama.options import BUILTIN_LOAD, BUILTIN_PARAMETERS

TURNS = [Message(role="user", content=f"question number {n}") if n % 2 == 0 else
         Message(role="assistant", content=f"answer number {n}") for n in range(5)]


def _resolved(**changes) -> Resolved:
    base = dict(name="m", model="org/m", parameters=BUILTIN_PARAMETERS, load=BUILTIN_LOAD, sources={})
    return Resolved(**{**base, **changes})


def test_system_then_seed_messages_then_history():
    resolved = _resolved(system="Be brief.", messages=[Message(role="user", content="seed q"),
                                                        Message(role="assistant", content="seed a")])
    messages = conversation(resolved, [Message(role="user", content="now")])
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "seed q"},
                        {"role": "assistant", "content": "seed a"}, {"role": "user", "content": "now"}]


def test_a_system_message_in_the_history_replaces_the_alias_one():
    messages = conversation(_resolved(system="alias"), [Message(role="system", content="mine"),
                                                         Message(role="user", content="q")])
    assert messages[0] == {"role": "system", "content": "mine"} and len(messages) == 2


def test_json_mode_adds_its_instruction_to_the_system_prompt():
    json_on = BUILTIN_PARAMETERS.model_copy(update={"json_mode": True})
    assert conversation(_resolved(system="Be brief.", parameters=json_on), [])[0]["content"] == (
        f"Be brief.\n\n{JSON_INSTRUCTION}")
    assert conversation(_resolved(parameters=json_on), [])[0] == {"role": "system", "content": JSON_INSTRUCTION}


def test_chat_template_renders_the_conversation(tiny):
    prompt = build_prompt(tiny.tokenizer, [{"role": "user", "content": "Say hello."}])
    assert prompt.text == "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    assert tiny.tokenizer.decode(prompt.ids) == prompt.text
    assert prompt.extra_stops == ()


def test_template_override(tiny):
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}> "
    prompt = build_prompt(tiny.tokenizer, [{"role": "user", "content": "hi"}], template=template)
    assert prompt.text == "[user] hi\n> "


def test_plain_format_without_a_template():
    text = plain_format([{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}])
    assert text == "S\n\nUser: q\nAssistant: a\nUser: q2\nAssistant:"


#: A template that, as many do (Llama 3's, Gemma's), refuses a system message anywhere but first.
SYSTEM_FIRST = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
                "{{ raise_exception('System message must be at the beginning.') }}{% endif %}"
                "<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>")


def test_a_system_message_mid_conversation_is_a_turn_where_the_template_takes_one(tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "system", "content": "Now answer in French."}, {"role": "user", "content": "again"}]
    assert build_prompt(tiny.tokenizer, messages).text.count("<|im_start|>system") == 2  # the model's own template
    merged = build_prompt(tiny.tokenizer, messages, template=SYSTEM_FIRST).text  # one that refuses it
    assert merged == "<system>Be brief.\n\nNow answer in French.\n<user>hi\n<user>again\n<assistant>"
    alone = [{"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."}]
    assert build_prompt(tiny.tokenizer, alone, template=SYSTEM_FIRST).text == "<system>Be brief.\n<user>hi\n<assistant>"
    silent = ("{% for m in messages %}{% if m['role'] != 'system' or loop.first %}"
              "<{{ m['role'] }}>{{ m['content'] }}\n{% endif %}{% endfor %}<assistant>")
    # a template that leaves a later system message out without a word
    assert build_prompt(tiny.tokenizer, messages, template=silent).text == merged
    with pytest.raises(ChatTemplateError, match="must be at the beginning"):  # nothing to move: the error stands
        build_prompt(tiny.tokenizer, messages[:2], template=SYSTEM_FIRST.replace("not loop.first", "true"))


def test_context_trimming_drops_the_oldest_whole_turns_and_keeps_the_system_prompt(tiny):
    messages = [{"role": "system", "content": "Keep me."}] + [message.model_dump() for message in TURNS]
    full = build_prompt(tiny.tokenizer, messages)
    newest_two = build_prompt(tiny.tokenizer, messages[:1] + messages[3:])
    prompt = build_prompt(tiny.tokenizer, messages, ctx=len(newest_two.ids) + 1)
    assert prompt.dropped_turns == 1
    assert prompt.messages == messages[:1] + messages[3:]
    assert len(prompt.ids) < len(full.ids)
    last_only = build_prompt(tiny.tokenizer, messages[:1] + messages[5:])
    prompt = build_prompt(tiny.tokenizer, messages, ctx=len(last_only.ids) + 1)
    assert prompt.messages == [messages[0], messages[5]] and prompt.dropped_turns == 2


def test_a_prompt_that_cannot_fit_is_a_clear_error(tiny):
    with pytest.raises(PromptTooLong, match="context is 5 tokens"):
        build_prompt(tiny.tokenizer, [{"role": "system", "content": "long " * 20}, {"role": "user", "content": "q"}],
                     ctx=5)


def test_a_long_history_is_trimmed_in_few_renders(tiny):
    """Bisection over the turns: each render tokenizes the whole conversation, so one per turn would not scale."""
    messages = [{"role": "system", "content": "Be brief."}]
    for index in range(300):
        messages += [{"role": "user", "content": f"question {index}"}, {"role": "assistant", "content": "answer"}]
    messages.append({"role": "user", "content": "last"})
    renders = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tiny.tokenizer, name)

        def __call__(self, text, **kwargs):
            renders.append(text)
            return tiny.tokenizer(text, **kwargs)

    expected = next(dropped for dropped in range(301) if len(build_prompt(
        tiny.tokenizer, messages[:1] + messages[1 + 2 * dropped:]).ids) < 120)
    prompt = build_prompt(Counting(), messages, ctx=120)
    assert prompt.dropped_turns == expected and len(prompt.ids) < 120
    assert len(renders) <= 12
