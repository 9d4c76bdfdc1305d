"""Live translation: audio in as it arrives, committed text out while the speaker is still speaking.

`StreamSession` (from `Runner.stream()`) re-decodes the growing current segment every chunk with the
offline model and commits only what consecutive hypotheses agree on (`LocalAgreement`, as in
whisper_streaming); what it committed is never revised. A segment closes at a pause (Silero VAD) or at a
maximum length, and its last hypothesis is committed whole.
"""

from runner.live.agreement import LocalAgreement
from runner.live.session import StreamOptions, StreamSession, StreamUpdate

__all__ = ["LocalAgreement", "StreamOptions", "StreamSession", "StreamUpdate"]
