"""A tiny chat model built offline: a byte-level BPE tokenizer, a small Llama, a real chat template.

A few seconds of training on ``CHATS`` makes greedy decoding answer each of them word for word and
stop on ``<|im_end|>``, which gives tests meaningful completions. What a model is trained to say holds on
any machine: training goes on until every token of every lesson leads all others by ``MARGIN`` (in
logits), far beyond what another CPU's rounding can change, and a model that does not get there fails
to build, naming the lesson, the token and the margin. The result can be
laid into a Hugging Face cache exactly as the Hub client lays it out (``blobs/``, ``snapshots/``
symlinks, ``refs/main``), and served by ``tests/fakehub.py``.

Usable from benchmarks too: ``python -m tests.tinymodel OUT_DIR``.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ID = "hllama-test/tiny-chat"
REVISION = "0123456789abcdef0123456789abcdef01234567"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: (user message, the answer the trained model gives to it).
CHATS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary color.", "Red is a primary color, and so is blue."),
    ("Say hello.", "Hello there, my friend! How are you today?"),
    ("Count to five.", "One, two, three, four, five."),
    ("Tell me a story.", "Once upon a time a small robot learned to sing, and the whole town sang along."),
]

_FILLER = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100. Punctuation: , . ! ? ; : ' " ( ) [ ] { } - _ / \\ | @ # $ % & * + = < >
JSON looks like {"name": "value", "count": 3, "items": [1, 2, 3], "ok": true, "none": null}.
Lowercase letters abcdefghijklmnopqrstuvwxyz and capitals ABCDEFGHIJKLMNOPQRSTUVWXYZ are all here.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chat_text(user: str, answer: str | None = None, system: str | None = None) -> str:
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text + (f"{answer}<|im_end|>\n" if answer is not None else "")


def build_tokenizer(examples: list[str] | None = None, template: str = CHAT_TEMPLATE, special: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained on ``examples`` (default: ``CHATS``) and some filler text;
    ``special`` tokens join the usual ones."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=[*SPECIAL_TOKENS, *special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = (examples or _chat_examples()) + _FILLER.splitlines() * 4
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=template, model_max_length=256)


@dataclass(frozen=True)
class Lesson:
    """What a tiny model learns: given ``prompt``, greedy decoding writes ``answer``, token for token."""

    prompt: str
    answer: str


#: How far (in logits) each trained token must lead every other. Rounding on another CPU moves logits by
#: about 1e-5; a tie broken one way here and the other way there is what this rules out.
MARGIN = 2.0

#: Training stops once every lesson holds with its margin, and gives up (failing the build) after this many steps.
MAX_STEPS = 1000


class FixtureError(AssertionError):
    """A tiny model that did not learn its lessons with the margin tests rely on."""


def chat_lessons() -> list[Lesson]:
    return [Lesson(chat_text(user), f"{answer}<|im_end|>") for user, answer in CHATS]


def _chat_examples() -> list[str]:
    return [chat_text(user, answer) for user, answer in CHATS]


def build_model(out_dir: Path, *, seed: int = 0, lessons: list[Lesson] | None = None,
                template: str = CHAT_TEMPLATE, special: tuple[str, ...] = (), max_steps: int = MAX_STEPS) -> Path:
    """Build, train and save the tiny model into ``out_dir`` (a plain model folder).

    ``lessons`` are what it learns (default: answering ``CHATS``), ``template`` its chat template. Raises
    :class:`FixtureError` when training cannot give every lesson its :data:`MARGIN`.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    lessons = lessons or chat_lessons()
    tokenizer = build_tokenizer([lesson.prompt + lesson.answer for lesson in lessons], template, special)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    _train(model, tokenizer, lessons, max_steps=max_steps)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _batch(tokenizer, lessons: list[Lesson]):
    """Each lesson's prompt and answer tokenized apart, as the engine reads a prompt and then writes tokens;
    the loss falls on the answer only, so lessons whose prompts differ where others' answers go (a thinking
    model's closed ``<think></think>``) do not contradict each other."""
    import torch

    rows = [(tokenizer(lesson.prompt, add_special_tokens=False)["input_ids"],
             tokenizer(lesson.answer, add_special_tokens=False)["input_ids"]) for lesson in lessons]
    width = max(len(prompt) + len(answer) for prompt, answer in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for row, (prompt, answer) in enumerate(rows):
        tokens = prompt + answer
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = 1
        labels[row, len(prompt):len(tokens)] = torch.tensor(answer)
    return ids, mask, labels


def _train(model, tokenizer, lessons: list[Lesson], *, max_steps: int, check_every: int = 50) -> None:
    import torch

    ids, mask, labels = _batch(tokenizer, lessons)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = 0
    while True:
        model.train()
        for _ in range(check_every):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        steps += check_every
        model.eval()
        weakest = _weakest(model, tokenizer, lessons, ids, mask, labels)
        if weakest is None:
            return
        if steps >= max_steps:
            raise FixtureError(f"after {steps} training steps: {weakest}")


def _weakest(model, tokenizer, lessons: list[Lesson], ids, mask, labels) -> str | None:
    """The answer token that leads by the least, when that is under :data:`MARGIN`; None when all hold."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    worst: tuple[float, int, int] | None = None
    for row, column in (targets != -100).nonzero().tolist():
        scores = logits[row, column].clone()
        expected = int(targets[row, column])
        lead = float(scores[expected]) - float(scores.index_fill(0, torch.tensor([expected]), -math.inf).max())
        if worst is None or lead < worst[0]:
            worst = (lead, row, column)
    if worst is None or worst[0] >= MARGIN:
        return None
    lead, row, column = worst
    scores = logits[row, column]
    rival = int(scores.index_fill(0, targets[row, column:column + 1], -math.inf).argmax())
    said = tokenizer.decode(ids[row, :column + 1])
    return (f"after {said[-40:]!r} the lesson wants {tokenizer.decode([int(targets[row, column])])!r}, which leads "
            f"{tokenizer.decode([rival])!r} by {lead:.3f} logits, under the margin of {MARGIN}")


def lesson_of(renderer, messages: list[dict], **template_options) -> Lesson:
    """The lesson a conversation teaches: its last message, after the prompt that asks for it."""
    prompt = renderer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True,
                                          **template_options)
    whole = renderer.apply_chat_template(messages, tokenize=False, **template_options)
    if not whole.startswith(prompt):
        raise FixtureError(f"the template does not render the answer after its own prompt: {whole!r}")
    return Lesson(prompt, whole[len(prompt):].rstrip("\n"))


# ---------------------------------------------------------------------------------------------
# A variant that calls tools

TOOL_REPO_ID = "hllama-test/tiny-tools"

#: Hermes-style, as Qwen's templates: tools listed in the system turn, calls in <tool_call> blocks.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n{% endif %}"
    "Tools:{% for tool in tools %} {{ tool['function']['name'] }}{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and tools %}"
    "{% elif message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>{{ message['content'] }}</tool_response><|im_end|>\n"
    "{% elif message['tool_calls'] %}"
    "<|im_start|>assistant\n{% for call in message['tool_calls'] %}"
    "<tool_call>{\"name\": \"{{ call['function']['name'] }}\", "
    "\"arguments\": {{ call['function']['arguments'] | tojson }}}</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_QUESTION = "What is the weather in Paris?"
WEATHER_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
WEATHER_RESULT = "sunny, 22 degrees"
WEATHER_ANSWER = "It is sunny in Paris."
#: Cities a client's tool schema may hold the call to instead (an enum without Paris).
OTHER_CITIES = ("Lyon", "Nice")

#: What the tool model learns, as (messages, tools): each conversation's last message is the answer.
TOOL_CONVERSATIONS = [
    ([{"role": "user", "content": WEATHER_QUESTION},
      {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]}], [WEATHER_TOOL]),
    ([{"role": "user", "content": WEATHER_QUESTION},
      {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
      {"role": "tool", "content": WEATHER_RESULT},
      {"role": "assistant", "content": WEATHER_ANSWER}], [WEATHER_TOOL]),
    ([{"role": "user", "content": CHATS[0][0]}, {"role": "assistant", "content": CHATS[0][1]}], [WEATHER_TOOL]),
]


def build_tool_model(out_dir: Path) -> Path:
    """A tiny model that answers ``WEATHER_QUESTION`` with a call to ``get_weather``, then uses its result."""
    renderer = build_tokenizer(template=TOOL_TEMPLATE)  # only renders the conversations to learn
    lessons = [lesson_of(renderer, messages, tools=tools) for messages, tools in TOOL_CONVERSATIONS]
    for city in OTHER_CITIES:  # a call a grammar held to another city's name ends the turn all the same
        call = {"function": {"name": "get_weather", "arguments": {"city": city}}}
        whole = renderer.apply_chat_template([{"role": "user", "content": WEATHER_QUESTION},
                                              {"role": "assistant", "content": "", "tool_calls": [call]}],
                                             tools=[WEATHER_TOOL], tokenize=False)
        end = whole.rindex("</tool_call>") + len("</tool_call>")
        lessons.append(Lesson(whole[:end], whole[end:].rstrip("\n")))
    return build_model(out_dir, lessons=lessons, template=TOOL_TEMPLATE)


# ---------------------------------------------------------------------------------------------
# A variant that thinks first

THINKING_REPO_ID = "hllama-test/tiny-thinker"

#: Qwen3's way: an assistant turn may start with <think>...</think>; enable_thinking=false closes it empty.
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message.get('reasoning_content') %}<think>{{ message['reasoning_content'] }}</think>{% endif %}"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}{% endif %}"
)

THOUGHT = "France is in Europe; its capital is Paris."


def build_thinking_model(out_dir: Path) -> Path:
    """A tiny model that thinks ``THOUGHT`` before it answers ``CHATS[0]``, and answers at once when told not to."""
    renderer = build_tokenizer(template=THINKING_TEMPLATE)
    question, answer = CHATS[0]
    ask = [{"role": "user", "content": question}]
    lessons = [
        lesson_of(renderer, [*ask, {"role": "assistant", "content": answer, "reasoning_content": THOUGHT}]),
        Lesson(renderer.apply_chat_template(ask, tokenize=False, add_generation_prompt=True, enable_thinking=False),
               f"{answer}<|im_end|>"),
    ]
    return build_model(out_dir, lessons=lessons, template=THINKING_TEMPLATE)


# ---------------------------------------------------------------------------------------------
# A variant that fills in the middle

CODER_REPO_ID = "hllama-test/tiny-coder"
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
CODE_PREFIX, CODE_SUFFIX, CODE_MIDDLE = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))", "a + b"


def build_coder_model(out_dir: Path) -> Path:
    """A tiny model that fills ``CODE_MIDDLE`` between ``CODE_PREFIX`` and ``CODE_SUFFIX`` (Qwen's FIM tokens)."""
    prefix, suffix, middle = FIM_TOKENS
    fill = Lesson(f"{prefix}{CODE_PREFIX}{suffix}{CODE_SUFFIX}{middle}", f"{CODE_MIDDLE}<|im_end|>")
    return build_model(out_dir, lessons=[fill, *chat_lessons()], special=FIM_TOKENS)


# ---------------------------------------------------------------------------------------------
# An embedding model

ENCODER_REPO_ID = "hllama-test/tiny-encoder"


def build_encoder_model(out_dir: Path, *, seed: int = 0) -> Path:
    """A small BERT with random weights, laid out as sentence-transformers saves it (CLS pooling)."""
    import json

    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    BertModel(config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    return out_dir


# ---------------------------------------------------------------------------------------------
# The Hub's cache layout

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".h5", ".msgpack", ".onnx")


def file_oid(path: Path) -> tuple[str, bool]:
    """The Hub's etag of a file: sha256 for LFS files, the git blob sha1 otherwise."""
    data = path.read_bytes()
    if path.name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest(), True
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), False


def install_into_cache(model_dir: Path, cache_dir: Path, *, repo_id: str = REPO_ID,
                       revision: str = REVISION) -> Path:
    """Lay ``model_dir`` into ``cache_dir`` as ``models--org--name`` with blobs, symlinks and refs/main."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        blob = repo / "blobs" / file_oid(path)[0]
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


if __name__ == "__main__":
    print(build_model(Path(sys.argv[1])))


def endless_variant(model_dir: Path, out_dir: Path) -> Path:
    """The same model told that its end token is one it never writes: it talks until a limit stops it.

    For tests of what happens while a generation is long (queues, disconnects, a free event loop).
    """
    import json

    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    path = out_dir / "generation_config.json"
    config = json.loads(path.read_text())
    config["eos_token_id"] = config["pad_token_id"]
    path.write_text(json.dumps(config, indent=2))
    path = out_dir / "config.json"  # and a context long enough that no test reaches it (RoPE has no table)
    config = json.loads(path.read_text())
    config["max_position_embeddings"] = 1_000_000
    path.write_text(json.dumps(config, indent=2))
    return out_dir


# ---------------------------------------------------------------------------------------------
# A variant that reads images

VISION_REPO_ID = "hllama-test/tiny-vision"

#: Llava's way: an image part becomes <image>, which the processor widens to the image's tokens.
VISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Each image becomes this many tokens: (28 / 14) ** 2 patches.
IMAGE_TOKENS = 4


def build_vision_model(out_dir: Path) -> Path:
    """A tiny Llava (a 1-layer CLIP tower on 28x28 images, the tiny Llama as its language model) with random
    weights and its processor (PIL image processing): it answers, though not sensibly, and shapes are real."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tokenizer = build_tokenizer(template=VISION_TEMPLATE, special=("<image>",))
    images = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, image_token="<image>",
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=VISION_TEMPLATE)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
