"""Test doubles: the fake OpenAI/Azure upstream, a kubelet-style Secret volume, the demo.

Apps test against these (``openai-runtime fake-upstream``), our tests and
benchmarks use them, and ``openai-runtime demo`` plays them end to end. None of
it is on the sidecar's serving path: the sidecar never imports this package.

``upstream`` is :class:`FakeUpstream`, the deterministic stand-in for
api.openai.com and Azure OpenAI, with its ``routes`` (the route table),
``replies`` (the answers' shapes), ``scenarios`` (chat, canned failures),
``store`` (files, batches, vector stores) and ``records`` (what it keeps of each
request). ``secretvolume`` is :class:`SecretVolume`, a directory updated the way
kubelet updates Secret volumes. ``demo`` is ``make demo`` (imported on demand: it
starts a real sidecar).
"""

from .records import FilePart, RecordedRequest
from .scenarios import SCENARIOS
from .secretvolume import SecretVolume
from .upstream import FakeUpstream

__all__ = ["SCENARIOS", "FakeUpstream", "FilePart", "RecordedRequest", "SecretVolume"]
