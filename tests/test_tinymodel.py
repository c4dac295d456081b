"""The tiny models behave the same on any machine: what they are trained to say leads by a margin, checked when
they are built, and a model that cannot learn its lessons fails to build, saying which lesson and why."""

import subprocess
import sys
from pathlib import Path

import pytest

from .tinymodel import FixtureError, Lesson, build_model, chat_text

#: Every trained fixture built in another process, with one thread and another seed: its training takes another
#: path through floating point, as on another CPU, and each build checks every lesson's margin again.
_ELSEWHERE = """
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from tests import tinymodel

out = Path(sys.argv[1])
tinymodel.build_model(out / "chat", seed=1)
tinymodel.build_thinking_model(out / "thinking")
tinymodel.build_tool_model(out / "tools")
tinymodel.build_coder_model(out / "coder")
print("built")
"""


def test_the_fixtures_learn_their_lessons_with_other_threads_and_seeds(tmp_path: Path):
    result = subprocess.run([sys.executable, "-c", _ELSEWHERE, str(tmp_path)], capture_output=True, text=True,
                            timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0 and result.stdout.strip() == "built", result.stderr[-2000:]


def test_a_model_that_cannot_learn_its_lessons_fails_to_build_and_says_where(tmp_path: Path):
    question = chat_text("Which way?")  # one prompt, two answers: no training gives either a margin
    lessons = [Lesson(question, "Left.<|im_end|>"), Lesson(question, "Right.<|im_end|>")]
    with pytest.raises(FixtureError, match=r"after 100 training steps: after '.*assistant\\n' the lesson wants "
                                           r"'(L|R)\w*', which leads '(L|R)\w*' by .* under the margin of 2.0"):
        build_model(tmp_path / "confused", lessons=lessons, max_steps=100)
