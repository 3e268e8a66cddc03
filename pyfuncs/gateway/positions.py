"""Positions as subscribers see them: opaque tokens.

A change-feed position counts every change captured in the database, so a subscriber given
raw positions could count the changes it was not shown between two of its own events: other
users' activity. The gateway gives subscribers tokens instead: the position encrypted with
AES-SIV (authenticated, so a forged or altered token is refused) under a random key kept in
the database (`pyfuncs.realtime_state.position_key`), which every gateway of that database
reads: a token from one gateway resumes on any other.

Two kinds, both accepted as `since`:
* a change's token is deterministic: one change has one token whoever receives it (the
  browser client tells a change it applied already by it); it reveals nothing but whether
  it equals another change's token, and a subscriber only gets those of changes it sees;
* a resume point (`subscribed`, `heartbeat`) is sealed with random bytes each time, so two
  of them never compare equal: they cannot tell a subscriber whether the feed moved (others
  committed) between two heartbeats or subscriptions.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from ..errors import SubscriptionError
from ..realtime import Position

_PLAIN = struct.Struct(">QQ")  # commit, change
_SALT = 8  # random bytes after the position in a resume point's plaintext
# base64url of the 16-byte synthetic IV and the ciphertext (16 or 24 bytes), unpadded
_LENGTHS = (43, 54)
_CACHE = 4096  # tokens kept for positions made again (a change sent to many subscribers)


def _encode(sealed: bytes) -> str:
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


class PositionTokens:
    def __init__(self, key: bytes) -> None:
        self._siv = AESSIV(key)
        self._made: dict[Position, str] = {}

    def token(self, position: Position) -> str:
        """The token of the change at `position` (the same for every subscriber)."""
        made = self._made.get(position)
        if made is None:
            made = _encode(self._siv.encrypt(_PLAIN.pack(position.commit, position.change), None))
            if len(self._made) >= _CACHE:
                self._made.clear()
            self._made[position] = made
        return made

    def resume_token(self, position: Position) -> str:
        """A token to resume from `position`, different every time it is made."""
        plain = _PLAIN.pack(position.commit, position.change) + os.urandom(_SALT)
        return _encode(self._siv.encrypt(plain, None))

    def position(self, token: object) -> Position:
        """The position a subscriber's token stands for; SubscriptionError("bad_position")
        for anything this database's gateways did not give out."""
        problem = SubscriptionError(
            "bad_position",
            "since is not a position this gateway gave out: use the `position` of the last "
            "change (or heartbeat) you received, or subscribe without `since`",
        )
        if type(token) is not str or len(token) not in _LENGTHS:
            raise problem
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            plain = self._siv.decrypt(sealed, None)
            commit, change = _PLAIN.unpack(plain[: _PLAIN.size])
        except (binascii.Error, ValueError, InvalidTag, struct.error):
            raise problem from None
        if len(plain) not in (_PLAIN.size, _PLAIN.size + _SALT):
            raise problem
        return Position(commit, change)
