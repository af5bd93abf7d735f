"""Without the dev tools installed, klein still lists their commands and each says in one
sentence how to get them (no I/O beyond reading the installed entry points)."""

import pytest

from orchestrator import plugins
from orchestrator.__main__ import parser
from orchestrator.errors import ConfigError

ABSENT_GROUP = "klein.devtools-not-installed"


def test_an_absent_entry_point_is_a_sentence_saying_how_to_install_it():
    with pytest.raises(ConfigError, match=r"^say this$"):
        plugins.load("local_endpoint", "say this", group=ABSENT_GROUP)
    assert plugins.commands(group=ABSENT_GROUP) is None


def test_the_installed_dev_tools_are_found_by_entry_point():
    assert plugins.commands() is not None
    assert callable(plugins.load("local_endpoint", "missing"))


@pytest.mark.parametrize(
    ("argv", "tool"),
    [
        (["endpoint", "--port", "8000"], "the local RunPod endpoint"),
        (["endpoint", "--help"], "the local RunPod endpoint"),
        (["comfy-standin", "--root", "/tmp/comfy"], "the ComfyUI stand-in"),
    ],
)
def test_without_the_dev_tools_their_commands_say_how_to_get_them(argv, tool):
    args = parser(None).parse_args(argv)
    with pytest.raises(ConfigError) as raised:
        args.run(args, None)
    assert str(raised.value) == f"{tool} is a development tool: install klein-i2i[devtools]"
