"""
The store section's floor row (C{txsession.storebench._floorSite}), against a real
C{redis-server}: it bounds what a cached read can cost only if its cached reads really keep
none of the request flow's records, and answer from the copy without a round trip.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.web import resource

from tests.test_store import StoreTestCase
from tests.test_web import Client
from txsession import storebench


class _Records(resource.Resource):
    """
    Counts in the session (with C{?count=1}), answers the count, and notes each request's
    store records (C{request._txsStore}) as it renders.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def render_GET(self, request):
        ns = request.getSession().sessionNamespaces
        if b"count" in request.args:
            ns["hits"] = ns.get("hits", 0) + 1
        self.seen.append(request._txsStore)
        return str(ns.get("hits")).encode()


class FloorSiteTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_cachedReadKeepsNoRecords(self):
        """
        A new session goes the store's way (its records, its write); reads of it from the
        copy then keep no records, cost no round trip, and do not go through the store's
        own cached path.
        """
        page = _Records()
        site = self.serve(storebench._floorSite(page, self.redis.url))
        client = Client(site.base)
        _, body = yield client.get(b"page?count=1")
        self.assertEqual(body, b"1")
        self.assertIsNotNone(page.seen[-1])
        self.assertEqual(len(self.redis.keys()), 1)
        trips = site.store.roundTrips
        for _ in range(3):
            _, body = yield client.get(b"page")
            self.assertEqual(body, b"1")
            self.assertIsNone(page.seen[-1])
        self.assertEqual(site.store.roundTrips, trips)
        self.assertEqual(site._flow.cachedReads, 0)
        self.assertEqual(len(site.sessions), 1)
