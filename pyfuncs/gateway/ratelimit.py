"""Per-user limits on one gateway process: connections, subscriptions, messages per second.

A user is a token's subject (else its role). Counts are per process: with several gateway
processes behind a balancer a user may hold up to N times the limit, which bounds the load
one user puts on each process, the purpose of these limits.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from ..errors import SubscriptionError
from .config import GatewayConfig


@dataclass
class _Bucket:
    tokens: float
    at: float = field(default_factory=time.monotonic)


class RateLimits:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.connections: Counter[str] = Counter()
        self.subscriptions: Counter[str] = Counter()
        self.filter_values: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}

    def connect(self, user: str) -> None:
        """A connection counts as a message too (reconnecting is no way around the rate)."""
        self.message(user)
        if self.connections[user] >= self.config.max_connections_per_user:
            raise SubscriptionError(
                "rate_limited",
                f"{user} already has {self.config.max_connections_per_user} connections to "
                "this gateway; close one (one per browser is enough: the client shares it "
                "between tabs)",
            )
        self.connections[user] += 1

    def disconnect(self, user: str, subscriptions: int, filter_values: int) -> None:
        self.connections[user] -= 1
        self.subscriptions[user] -= subscriptions
        self.filter_values[user] -= filter_values
        if self.connections[user] <= 0:
            del self.connections[user], self.subscriptions[user], self.filter_values[user]
            self._prune()

    def _prune(self) -> None:
        """Forget the buckets of users without connections once they are full again (a
        full bucket is what a new one would be): a user's rate outlives its connections,
        and memory stays bounded by the users active in the last few seconds."""
        if len(self._buckets) <= 2 * len(self.connections) + 64:
            return
        rate, now = self.config.messages_per_second, time.monotonic()
        for user, bucket in list(self._buckets.items()):
            if (
                user not in self.connections
                and bucket.tokens + (now - bucket.at) * rate >= 2 * rate
            ):
                del self._buckets[user]

    def subscribe(self, user: str, filter_values: int) -> None:
        """One more subscription of `user`'s, with filters of that many values (one user's
        filters made every other subscriber's deliveries 15 times slower: a red team's)."""
        if self.subscriptions[user] >= self.config.max_subscriptions_per_user:
            raise SubscriptionError(
                "rate_limited",
                f"{user} already has {self.config.max_subscriptions_per_user} subscriptions "
                "on this gateway; unsubscribe from one first",
            )
        most = self.config.max_filter_values_per_user
        if self.filter_values[user] + filter_values > most:
            raise SubscriptionError(
                "rate_limited",
                f"{user}'s subscriptions on this gateway would filter on more than {most} "
                f"values in all (these filters have {filter_values}); unsubscribe from some, "
                "or filter on fewer values",
            )
        self.subscriptions[user] += 1
        self.filter_values[user] += filter_values

    def unsubscribe(self, user: str, filter_values: int) -> None:
        self.subscriptions[user] -= 1
        self.filter_values[user] -= filter_values

    def message(self, user: str) -> None:
        """A message from one of `user`'s clients: a token bucket of twice the rate."""
        rate = self.config.messages_per_second
        now = time.monotonic()
        bucket = self._buckets.setdefault(user, _Bucket(2 * rate, now))
        bucket.tokens = min(2 * rate, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1:
            raise SubscriptionError(
                "rate_limited",
                f"more than {rate:g} messages per second from {user}; slow down",
            )
        bucket.tokens -= 1
