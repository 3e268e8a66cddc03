"""Positions as subscribers see them: opaque tokens.

A change-feed position counts every change captured in the database, so a subscriber given
raw positions could count the changes it was not shown between two of its own events: other
users' activity. The gateway gives subscribers tokens instead: the position encrypted with
AES-SIV (deterministic, so one change has one token whoever receives it, and authenticated,
so a forged or altered token is refused) under a random key kept in the database
(`pyfuncs.realtime_state.position_key`), which every gateway of that database reads: a token
from one gateway resumes on any other. A token reveals nothing but whether it equals another.
"""

from __future__ import annotations

import base64
import binascii
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from ..errors import SubscriptionError
from ..realtime import Position

_PLAIN = struct.Struct(">QQ")  # commit, change
_LENGTH = 43  # base64url of the 16-byte synthetic IV and the 16-byte ciphertext, unpadded
_CACHE = 4096  # tokens kept for positions made again (heartbeats of idle subscriptions)


class PositionTokens:
    def __init__(self, key: bytes) -> None:
        self._siv = AESSIV(key)
        self._made: dict[Position, str] = {}

    def token(self, position: Position) -> str:
        """The token a subscriber gets for `position`."""
        made = self._made.get(position)
        if made is None:
            sealed = self._siv.encrypt(_PLAIN.pack(position.commit, position.change), None)
            made = base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
            if len(self._made) >= _CACHE:
                self._made.clear()
            self._made[position] = made
        return made

    def position(self, token: object) -> Position:
        """The position a subscriber's token stands for; SubscriptionError("bad_position")
        for anything this database's gateways did not give out."""
        problem = SubscriptionError(
            "bad_position",
            "since is not a position this gateway gave out: use the `position` of the last "
            "change (or heartbeat) you received, or subscribe without `since`",
        )
        if type(token) is not str or len(token) != _LENGTH:
            raise problem
        try:
            sealed = base64.urlsafe_b64decode(token + "=")
            commit, change = _PLAIN.unpack(self._siv.decrypt(sealed, None))
        except (binascii.Error, ValueError, InvalidTag, struct.error):
            raise problem from None
        return Position(commit, change)
