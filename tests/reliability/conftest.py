"""Fixtures for the reliability tests of `nanovllm serve`: one client must not be
able to slow the others or hold the server's shutdown (slow clients, huge stop
string lists, multi-megabyte prompts).

They run real `nanovllm serve` processes on 127.0.0.1, started by the `Server`
helper of tests/openai/conftest.py (same model, tokenizer, binary and
skip/fail rules: without the Qwen3 tokenizer they are skipped, except under
CI=true where that is a failure). Every timing assertion is a ratio of the
victim's time under attack to its time without the attack, and every loop is
bounded in count and time.
"""

import types

import pytest

from reliability_helpers import Server, openai_conftest

# pytest imports every conftest.py as the module `conftest`, so when this suite runs in
# the same session as tests/openai, that suite's `from conftest import ...` can find this
# file instead of its own: offer the same names (its helpers, not its fixtures).
globals().update({
    name: value for name, value in vars(openai_conftest).items()
    if not name.startswith("_") and name not in globals()
    and not isinstance(value, types.ModuleType)
    and not hasattr(value, "_pytestfixturefunction")
    and type(value).__name__ != "FixtureFunctionDefinition"
})


@pytest.fixture(scope="session")
def shared_server():
    """A server for the tests that do not stop it: room for 16 sequences at once."""
    s = Server("--num-kvcache-blocks", "1024", "--max-num-seqs", "16")
    yield s
    code = s.stop()
    assert code == 0, f"the server exited with {code}: {s.stderr()}"
