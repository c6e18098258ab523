"""
The Redis wire format in Rust (C{redis-protocol}): commands encoded as RESP2 arrays, replies
decoded from pieces of any size.
"""

from twisted.trial import unittest

from tests._support import assertCollected
from txsession._txsession import RespDecoder, encode_commands
from txsession.store import StoreError


class EncodeTests(unittest.SynchronousTestCase):
    def test_pipeline(self):
        self.assertEqual(
            encode_commands([[b"SET", b"k", b"a\r\nb"], [b"GET", b""]]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
        )

    def test_nothing(self):
        self.assertEqual(encode_commands([]), b"")


class DecodeTests(unittest.SynchronousTestCase):
    replies = (
        b"+OK\r\n:-12\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n*3\r\n$1\r\na\r\n*1\r\n:1\r\n$0\r\n\r\n"
        b"-ERR wrong type\r\n"
    )

    def check(self, replies):
        self.assertEqual(replies[:6], ["OK", -12, b"he\r\nl", None, None, [b"a", [1], b""]])
        self.assertIsInstance(replies[6], StoreError)
        self.assertEqual(str(replies[6]), "ERR wrong type")
        self.assertEqual(len(replies), 7)

    def test_whole(self):
        self.check(RespDecoder(StoreError).feed(self.replies))

    def test_byteByByte(self):
        """
        Replies split anywhere, even inside a length or a bulk string, come out whole.
        """
        decoder = RespDecoder(StoreError)
        replies = []
        for i in range(len(self.replies)):
            replies += decoder.feed(self.replies[i : i + 1])
        self.check(replies)

    def test_notRESP(self):
        self.assertRaises(ValueError, RespDecoder(StoreError).feed, b"?what\r\n")

    def test_cycleCollected(self):
        class Box:
            pass

        def build():
            box = Box()
            box.decoder = RespDecoder(lambda message: box)
            return box

        assertCollected(self, build)
