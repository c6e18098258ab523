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


def hgetall(fields):
    """
    An HGETALL reply: an array of C{fields} field names and values, as bulk strings.
    """
    parts = [b"*%d\r\n" % (2 * fields)]
    for i in range(fields):
        field, value = b"field:%d" % i, b"value:%d" % i
        parts.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(field), field, len(value), value))
    return b"".join(parts)


def feedInPieces(decoder, data, size):
    replies = []
    for i in range(0, len(data), size):
        replies += decoder.feed(data[i : i + size])
    return replies


class SplitTests(unittest.SynchronousTestCase):
    """
    A reply comes out the same however it is split, and each of its bytes is looked at a
    bounded number of times, so a reply in many pieces costs what it costs in one.
    """

    def test_bigArrayAnySplit(self):
        """
        A 200,000-element array of every kind of element, fed in one piece, in 64 KiB pieces
        and one byte at a time, gives the same reply each time.
        """
        elements = [
            b":%d\r\n" % i if i % 3 else b"$2\r\n%02d\r\n" % (i % 100) for i in range(200_000)
        ]
        elements[7] = b"$-1\r\n"
        elements[8] = b"*2\r\n+OK\r\n-ERR nested\r\n"
        data = b"*%d\r\n%s:5\r\n" % (len(elements), b"".join(elements))
        whole = RespDecoder(StoreError).feed(data)
        self.assertEqual(len(whole), 2)
        self.assertEqual(len(whole[0]), 200_000)
        self.assertEqual(whole[0][:3], [b"00", 1, 2])
        self.assertIsNone(whole[0][7])
        self.assertEqual(whole[0][8][0], "OK")
        self.assertIsInstance(whole[0][8][1], StoreError)
        self.assertEqual(whole[1], 5)
        for size in (65536, 1):
            replies = feedInPieces(RespDecoder(StoreError), data, size)
            self.assertIsInstance(replies[0][8][1], StoreError)
            self.assertEqual(str(replies[0][8][1]), "ERR nested")
            replies[0][8][1] = whole[0][8][1]
            self.assertEqual(replies, whole)

    def test_scannedLinear(self):
        """
        C{scanned} counts the bytes the decoder looked at: each byte once to find where its
        reply ends and once to decode the reply, however the replies are split.
        """
        big = hgetall(80_000)
        small = hgetall(3_000) + b"+OK\r\n" + hgetall(2)
        for data, size in ((big, 65536), (big, len(big)), (small, 1), (small, 7)):
            decoder = RespDecoder(StoreError)
            replies = feedInPieces(decoder, data, size)
            self.assertEqual(replies, RespDecoder(StoreError).feed(data))
            self.assertLessEqual(decoder.scanned, 2 * len(data))
        self.assertEqual(len(big), 2_855_789)
        self.assertEqual(len(replies), 3)
        self.assertEqual(replies[0][-2:], [b"field:2999", b"value:2999"])
        self.assertEqual(replies[1:], ["OK", [b"field:0", b"value:0", b"field:1", b"value:1"]])

    def test_scannedPartial(self):
        """
        The bytes of a reply still incomplete are scanned once, however many pieces it came in.
        """
        data = hgetall(5_000)[:-1]
        decoder = RespDecoder(StoreError)
        self.assertEqual(feedInPieces(decoder, data, 100), [])
        self.assertLessEqual(decoder.scanned, len(data))
        self.assertEqual(decoder.feed(b"\n")[0][-1], b"value:4999")


class MaxSizeTests(unittest.SynchronousTestCase):
    """
    A reply over C{max_size} bytes raises C{ValueError} as soon as that is known, before it is
    buffered whole.
    """

    def test_default(self):
        self.assertEqual(RespDecoder(StoreError).max_size, 512 * 1024 * 1024)
        self.assertEqual(RespDecoder(StoreError, max_size=10).max_size, 10)
        self.assertEqual(RespDecoder(error_type=StoreError, max_size=10).max_size, 10)

    def test_bulkHeaderOverDefault(self):
        """
        A bulk string announced longer than 512 MiB is refused from its header.
        """
        decoder = RespDecoder(StoreError)
        error = self.assertRaises(ValueError, decoder.feed, b"$%d\r\n" % (512 * 1024 * 1024))
        self.assertIn("max_size", str(error))

    def test_bulkHeader(self):
        """
        A bulk string that would make its reply one byte over the limit is refused from its
        header; at the limit it passes.
        """
        reply = b"$5\r\nhello\r\n"
        self.assertEqual(RespDecoder(StoreError, max_size=len(reply)).feed(reply), [b"hello"])
        self.assertRaises(
            ValueError, RespDecoder(StoreError, max_size=len(reply) - 1).feed, b"$5\r\n"
        )

    def test_arrayHeader(self):
        """
        An array whose elements cannot fit in the limit, even at their smallest (3 bytes), is
        refused from its header.
        """
        self.assertRaises(
            ValueError, RespDecoder(StoreError, max_size=1 << 20).feed, b"*1000000\r\n"
        )
        self.assertRaises(ValueError, RespDecoder(StoreError).feed, b"*%d\r\n" % (2**63 - 1))

    def test_bigArray(self):
        """
        An array whose elements add up to more than the limit is refused once the bytes received
        pass it, not after the whole reply.
        """
        data = hgetall(1000)
        decoder = RespDecoder(StoreError, max_size=5000)
        received = 0
        with self.assertRaises(ValueError):
            for i in range(0, len(data), 100):
                received += 100
                decoder.feed(data[i : i + 100])
        self.assertLessEqual(received, 5100)

    def test_exactlyAtLimit(self):
        """
        A reply of exactly C{max_size} bytes passes, in one piece or byte by byte, and so do
        replies after it; one byte less refuses it.
        """
        data = hgetall(1000)
        for size in (len(data), 1):
            decoder = RespDecoder(StoreError, max_size=len(data))
            replies = feedInPieces(decoder, data + data + b":1\r\n", size)
            self.assertEqual(len(replies), 3)
            self.assertEqual(replies[0], replies[1])
            self.assertEqual(len(replies[0]), 2000)
        decoder = RespDecoder(StoreError, max_size=len(data) - 1)
        self.assertRaises(ValueError, feedInPieces, decoder, data, 1)

    def test_longLine(self):
        """
        A simple string or an error longer than the limit is refused before its end.
        """
        for kind in b"+-":
            decoder = RespDecoder(StoreError, max_size=100)
            decoder.feed(bytes([kind]) + b"x" * 98)
            self.assertRaises(ValueError, decoder.feed, b"xx")


class BadReplyTests(unittest.SynchronousTestCase):
    """
    Bytes that are not RESP2 raise C{ValueError}; the decoder then refuses everything after.
    """

    def assertNotRESP(self, data):
        decoder = RespDecoder(StoreError)
        self.assertRaises(ValueError, decoder.feed, data)
        self.assertRaises(ValueError, decoder.feed, b"+OK\r\n")

    def test_badLengths(self):
        for data in (
            b"$-2\r\n",
            b"*-5\r\n",
            b"$abc\r\n",
            b"*1x\r\n",
            b"$\r\n",
            b"*99999999999999999999999\r\n",
        ):
            self.assertNotRESP(data)

    def test_numberLineTooLong(self):
        """
        A length or an integer longer than any number is refused before its CRLF arrives.
        """
        for kind in b"$*:":
            self.assertNotRESP(bytes([kind]) + b"1" * 40)

    def test_badInteger(self):
        self.assertNotRESP(b":12a\r\n")

    def test_bulkLongerThanItsLength(self):
        self.assertNotRESP(b"$3\r\nfooXY")

    def test_nesting(self):
        """
        Arrays nest up to 64 deep, which no Redis reply approaches; deeper is refused.
        """
        self.assertEqual(
            RespDecoder(StoreError).feed(b"*1\r\n" * 64 + b":1\r\n"), [self.nested(64)]
        )
        self.assertNotRESP(b"*1\r\n" * 65)

    def nested(self, depth):
        reply = 1
        for _ in range(depth):
            reply = [reply]
        return reply


class CapacityTests(unittest.SynchronousTestCase):
    """
    The buffer's memory is given back once a reply that needed more than 1 MiB is consumed.
    """

    def test_releasedAfterBigReply(self):
        body = b"x" * (4 * 1024 * 1024)
        data = b"$%d\r\n%s\r\n" % (len(body), body)
        decoder = RespDecoder(StoreError)
        self.assertEqual(feedInPieces(decoder, data[:-100], 65536), [])
        self.assertGreaterEqual(decoder.capacity, len(body))
        self.assertEqual(decoder.feed(data[-100:] + b"$3\r\nab"), [body])
        self.assertLess(decoder.capacity, 1024 * 1024)
        self.assertEqual(decoder.feed(b"c\r\n"), [b"abc"])

    def test_smallKept(self):
        """
        A small buffer keeps its capacity between replies, so steady traffic does not
        reallocate.
        """
        decoder = RespDecoder(StoreError)
        decoder.feed(b"+OK\r\n" * 1000)
        capacity = decoder.capacity
        self.assertGreater(capacity, 0)
        decoder.feed(b"+OK\r\n")
        self.assertEqual(decoder.capacity, capacity)
