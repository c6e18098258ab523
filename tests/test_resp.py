"""
The Redis wire format in Rust (C{redis-protocol}): commands encoded as RESP2 arrays, replies
decoded from pieces of any size, as RESP2 or, on request, RESP3.
"""

import math
import socket
import sys

from twisted.trial import unittest

from tests._redis import RedisServer
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

    def test_lengths(self):
        """
        Arguments of every length around a change in its number of digits, and commands of
        as many arguments, read back as they were by the decoder (an array of bulk strings
        is a command's reply form too).
        """
        sizes = [0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 1001, 65535, 65536, 100000]
        commands = [[bytes([i % 256]) * (i % 7) for i in range(count)] for count in sizes[:9]]
        commands += [[b"x" * size] for size in sizes]
        data = encode_commands(commands)
        self.assertEqual(RespDecoder(StoreError).feed(data), commands)

    def test_not_bytes(self):
        self.assertRaises(TypeError, encode_commands, [[b"SET", "k", b"v"]])


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


def fedUntilRefused(case, decoder, data, size=100):
    """
    How many bytes of C{data}, fed in pieces of C{size}, C{decoder} took before it raised
    C{ValueError} (which C{case} asserts it does).
    """
    received = 0
    with case.assertRaises(ValueError):
        for i in range(0, len(data), size):
            received += size
            decoder.feed(data[i : i + size])
    return received


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
        decoder = RespDecoder(StoreError, max_size=5000)
        self.assertLessEqual(fedUntilRefused(self, decoder, hgetall(1000)), 5100)

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


def resp3(error_type=StoreError, **kwargs):
    return RespDecoder(error_type, resp3=True, **kwargs)


def map3(fields):
    """
    An HGETALL reply in RESP3: a map of C{fields} field names to values, as blob strings.
    """
    parts = [b"%%%d\r\n" % fields]
    for i in range(fields):
        field, value = b"field:%d" % i, b"value:%d" % i
        parts.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(field), field, len(value), value))
    return b"".join(parts)


class RESP3TypeTests(unittest.SynchronousTestCase):
    """
    With C{resp3=True}, each RESP3 type becomes its Python value.
    """

    def assertDecodes(self, data, expected):
        self.assertEqual(resp3().feed(data), [expected])

    def test_resp2Types(self):
        """
        RESP2's types, which RESP3 keeps, decode as they do without C{resp3}.
        """
        self.assertEqual(
            resp3().feed(b"+OK\r\n:-12\r\n$5\r\nhe\r\nl\r\n*2\r\n$1\r\na\r\n*0\r\n"),
            ["OK", -12, b"he\r\nl", [b"a", []]],
        )

    def test_errors(self):
        """
        A simple error and a blob error both become C{error_type(message)}.
        """
        simple, blob = resp3().feed(b"-ERR simple\r\n!14\r\nERR blob\r\nline\r\n")
        self.assertIsInstance(simple, StoreError)
        self.assertEqual(str(simple), "ERR simple")
        self.assertIsInstance(blob, StoreError)
        self.assertEqual(str(blob), "ERR blob\r\nline")

    def test_null(self):
        self.assertDecodes(b"_\r\n", None)

    def test_resp2Nulls(self):
        """
        RESP2's nulls, which the crate's RESP3 decoder refuses on their own, are C{None} at the
        top and inside any aggregate, beside RESP3's C{_}.
        """
        self.assertEqual(resp3().feed(b"$-1\r\n*-1\r\n_\r\n"), [None, None, None])
        self.assertDecodes(b"*4\r\n$-1\r\n*-1\r\n_\r\n*1\r\n$-1\r\n", [None, None, None, [None]])
        self.assertDecodes(b"%1\r\n+k\r\n$-1\r\n", {"k": None})
        self.assertDecodes(b">2\r\n$10\r\ninvalidate\r\n*-1\r\n", (b"invalidate", None))

    def test_booleans(self):
        self.assertEqual(resp3().feed(b"#t\r\n#f\r\n"), [True, False])

    def test_doubles(self):
        replies = resp3().feed(b",1.5\r\n,-0.25\r\n,10\r\n,1e300\r\n,inf\r\n,-inf\r\n,nan\r\n")
        for reply in replies:
            self.assertIs(type(reply), float)
        self.assertEqual(replies[:6], [1.5, -0.25, 10.0, 1e300, math.inf, -math.inf])
        self.assertTrue(math.isnan(replies[6]))

    def test_bigNumbers(self):
        """
        A big number is an C{int} however many digits it has.
        """
        self.assertEqual(
            resp3().feed(
                b"(3492890328409238509324850943850943825024385\r\n(-18446744073709551617\r\n(7\r\n"
            ),
            [3492890328409238509324850943850943825024385, -18446744073709551617, 7],
        )

    def test_verbatim(self):
        """
        A verbatim string is the C{bytes} of its text, without its format.
        """
        self.assertDecodes(b"=15\r\ntxt:Some string\r\n", b"Some string")
        self.assertDecodes(b"=4\r\nmkd:\r\n", b"")

    def test_map(self):
        """
        A map is a C{dict}, its keys converted as values are: C{bytes} for blob strings, C{str}
        for simple strings, C{int} for integers.
        """
        self.assertDecodes(
            b"%3\r\n$1\r\na\r\n:1\r\n+b\r\n*1\r\n#t\r\n:3\r\n%0\r\n",
            {b"a": 1, "b": [True], 3: {}},
        )

    def test_set(self):
        """
        A set is a C{list} of its elements (in no particular order).
        """
        [members] = resp3().feed(b"~3\r\n$1\r\na\r\n$1\r\nb\r\n:1\r\n")
        self.assertIsInstance(members, list)
        self.assertEqual(sorted(members, key=repr), [1, b"a", b"b"])
        self.assertDecodes(b"~0\r\n", [])

    def test_push(self):
        """
        A push is a C{tuple}, and replies never are: an invalidation is
        C{(b"invalidate", [keys])}.
        """
        self.assertDecodes(
            b">2\r\n$10\r\ninvalidate\r\n*2\r\n$4\r\nkey1\r\n$4\r\nkey2\r\n",
            (b"invalidate", [b"key1", b"key2"]),
        )
        self.assertDecodes(b">2\r\n$10\r\ninvalidate\r\n_\r\n", (b"invalidate", None))

    def test_pushBetweenReplies(self):
        """
        A push that arrives between two replies comes out between them.
        """
        self.assertEqual(
            resp3().feed(b"$1\r\na\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n:2\r\n"),
            [b"a", (b"message", b"ch", b"hi"), 2],
        )

    def test_hello(self):
        """
        The map that Redis 7 answers C{HELLO 3} with.
        """
        data = (
            b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n"
            b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
            b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
        )
        self.assertDecodes(
            data,
            {
                b"server": b"redis",
                b"version": b"7.0.15",
                b"proto": 3,
                b"id": 5,
                b"mode": b"standalone",
                b"role": b"master",
                b"modules": [],
            },
        )

    def test_attribute(self):
        """
        An attribute is dropped and the element after it is the value, at the top, inside an
        aggregate, before a null, empty, and with attributes of its own.
        """
        self.assertEqual(
            resp3().feed(
                b"|1\r\n+key-popularity\r\n*2\r\n$1\r\na\r\n,0.19\r\n$5\r\nvalue\r\n"
                b"|1\r\n+ttl\r\n:3\r\n_\r\n"
                b"|1\r\n+ttl\r\n:3\r\n$-1\r\n"
                b"*3\r\n|0\r\n:1\r\n%1\r\n|1\r\n|0\r\n+a\r\n:1\r\n+k\r\n:2\r\n:3\r\n"
            ),
            [b"value", None, None, [1, {"k": 2}, 3]],
        )

    def test_attributeWaitsForItsValue(self):
        """
        An attribute alone is not a reply: the reply ends after the element that follows it.
        """
        decoder = resp3()
        self.assertEqual(decoder.feed(b"|1\r\n+a\r\n+b\r\n"), [])
        self.assertEqual(decoder.feed(b":1\r\n"), [1])


class RESP3StreamTests(unittest.SynchronousTestCase):
    """
    A RESP3 stream split anywhere decodes as it does whole, each byte looked at a bounded
    number of times.
    """

    stream = (
        b"%2\r\n$5\r\nproto\r\n:3\r\n+k\r\n~2\r\n$1\r\na\r\n$1\r\nb\r\n"
        b"+OK\r\n_\r\n#t\r\n,-1.5\r\n(123456789012345678901234567890\r\n"
        b"=8\r\ntxt:a\r\nb\r\n!7\r\nERR x\r\n\r\n-ERR y\r\n"
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
        b"|1\r\n+ttl\r\n:1\r\n*3\r\n$-1\r\n*-1\r\n$0\r\n\r\n:-7\r\n"
    )

    def check(self, replies):
        self.assertEqual(len(replies), 12)
        self.assertEqual(sorted(replies[0]["k"]), [b"a", b"b"])
        self.assertEqual(replies[0][b"proto"], 3)
        self.assertEqual(
            replies[1:7], ["OK", None, True, -1.5, 123456789012345678901234567890, b"a\r\nb"]
        )
        self.assertIsInstance(replies[7], StoreError)
        self.assertEqual(str(replies[7]), "ERR x\r\n")
        self.assertIsInstance(replies[8], StoreError)
        self.assertEqual(replies[9:], [(b"invalidate", [b"k"]), [None, None, b""], -7])

    def test_whole(self):
        self.check(resp3().feed(self.stream))

    def test_byteByByte(self):
        """
        The stream fed a byte at a time (or 7 at a time) gives the same replies, and its bytes
        are scanned at most twice.
        """
        for size in (1, 7):
            decoder = resp3()
            self.check(feedInPieces(decoder, self.stream, size))
            self.assertLessEqual(decoder.scanned, 2 * len(self.stream))

    def test_scannedLinear(self):
        """
        A big map in 64 KiB pieces, and small ones with RESP2 nulls and attributes byte by
        byte, are scanned at most twice.
        """
        big = map3(80_000)
        small = (map3(300) + b"|1\r\n+a\r\n:1\r\n*1\r\n$-1\r\n" + map3(2)) * 3
        for data, size in ((big, 65536), (small, 1)):
            decoder = resp3()
            replies = feedInPieces(decoder, data, size)
            self.assertEqual(replies, resp3().feed(data))
            self.assertLessEqual(decoder.scanned, 2 * len(data))
        self.assertEqual(len(replies), 9)
        self.assertEqual(replies[0][b"field:299"], b"value:299")
        self.assertEqual(replies[1:3], [[None], {b"field:0": b"value:0", b"field:1": b"value:1"}])


class RESP3LimitTests(unittest.SynchronousTestCase):
    """
    C{max_size} and the 64-deep nesting limit apply to RESP3's aggregates as to arrays.
    """

    def test_aggregateHeaders(self):
        """
        A map (two elements an entry), set, push or attribute whose elements cannot fit in the
        limit at 3 bytes each is refused from its header.
        """
        for header in (b"%500000\r\n", b"|500000\r\n", b"~1000000\r\n", b">1000000\r\n"):
            decoder = resp3(max_size=1 << 20)
            error = self.assertRaises(ValueError, decoder.feed, header)
            self.assertIn("max_size", str(error))
        self.assertEqual(resp3(max_size=1 << 20).feed(b"~300000\r\n"), [])
        self.assertRaises(ValueError, resp3().feed, b"%%%d\r\n" % (2**63 - 1))

    def test_blobHeaders(self):
        """
        A blob error or verbatim string over the limit is refused from its header.
        """
        for header in (b"!2000\r\n", b"=2000\r\n"):
            self.assertRaises(ValueError, resp3(max_size=1000).feed, header)

    def test_bigMap(self):
        """
        A map whose entries add up to more than the limit is refused once the bytes received
        pass it; one of exactly the limit passes, byte by byte too.
        """
        data = map3(1000)
        self.assertLessEqual(fedUntilRefused(self, resp3(max_size=5000), data), 5100)
        for size in (len(data), 1):
            replies = feedInPieces(resp3(max_size=len(data)), data + data, size)
            self.assertEqual(len(replies), 2)
            self.assertEqual(len(replies[0]), 1000)
        self.assertRaises(ValueError, feedInPieces, resp3(max_size=len(data) - 1), data, 1)

    def test_longLines(self):
        """
        A double or big number longer than the limit is refused before its end; a big number
        may otherwise be longer than any integer.
        """
        for kind in b",(":
            decoder = resp3(max_size=100)
            decoder.feed(bytes([kind]) + b"1" * 98)
            self.assertRaises(ValueError, decoder.feed, b"11")
        self.assertEqual(resp3().feed(b"(" + b"9" * 100 + b"\r\n"), [int("9" * 100)])

    def test_nesting(self):
        """
        Maps, sets, pushes and attributes nest up to 64 deep with arrays; deeper is refused.
        (The crate's RESP3 decoder takes no aggregate inside a set, so a set is innermost.)
        """
        headers = [b"*1\r\n", b"%1\r\n+k\r\n", b">1\r\n"] * 21 + [b"~1\r\n"]
        [reply] = resp3().feed(b"".join(headers) + b":1\r\n")
        for _ in range(21):
            reply = reply[0]["k"][0]
        self.assertEqual(reply, [1])
        for deeper in (b"*1\r\n", b"%1\r\n", b"~1\r\n", b">1\r\n", b"|1\r\n"):
            decoder = resp3()
            self.assertRaises(ValueError, decoder.feed, b"".join(headers[:-1]) + b"*1\r\n" + deeper)
            self.assertRaises(ValueError, decoder.feed, b":1\r\n")


class RESP3BadReplyTests(unittest.SynchronousTestCase):
    """
    Bytes that are not RESP3 raise C{ValueError}, and the decoder then refuses everything
    after.
    """

    def assertNotRESP3(self, data):
        decoder = resp3()
        self.assertRaises(ValueError, decoder.feed, data)
        self.assertRaises(ValueError, decoder.feed, b"+OK\r\n")

    def test_streamedRefused(self):
        """
        Streamed blob strings and aggregates, and their chunks, which Redis does not send to
        clients, are refused rather than framed.
        """
        for data in (b"$?\r\n", b"*?\r\n", b"%?\r\n", b"~?\r\n", b";4\r\nabcd\r\n", b".\r\n"):
            self.assertNotRESP3(data)
        error = self.assertRaises(ValueError, resp3().feed, b"$?\r\n;1\r\na\r\n;0\r\n")
        self.assertIn("not a Redis reply: a streamed RESP3 type", str(error))

    def test_badLines(self):
        for data in (
            b"_x\r\n",
            b"#x\r\n",
            b",one\r\n",
            b"(12a\r\n",
            b"(1_000\r\n",
            b"( 1\r\n",
            b"(\r\n",
            b"=3\r\ntxt\r\n",
            b"=7\r\nfoo:bar\r\n",
            b"%-1\r\n",
            b"~-1\r\n",
            b">-1\r\n",
            b"!-1\r\n",
            b"|-1\r\n",
            b"HELLO 3\r\n",
        ):
            self.assertNotRESP3(data)

    def test_numberLineTooLong(self):
        for kind in b"%~>|!=":
            self.assertNotRESP3(bytes([kind]) + b"1" * 40)

    def test_aggregateKeys(self):
        """
        A map key or set element that is an aggregate (unhashable in Python) is refused.
        """
        self.assertNotRESP3(b"%1\r\n*0\r\n:1\r\n")
        self.assertNotRESP3(b"~1\r\n%0\r\n")

    def test_conversionFails(self):
        """
        A reply that fails to become a Python value (here an C{error_type} that raises) loses
        the replies after it in the same call, so the decoder then refuses everything.
        """

        def broken(message):
            raise RuntimeError(message)

        decoder = resp3(broken)
        self.assertRaises(RuntimeError, decoder.feed, b"-ERR\r\n+OK\r\n")
        self.assertRaises(ValueError, decoder.feed, b"+OK\r\n")

    def test_bigNumberPastPythonsLimit(self):
        """
        A big number with more digits than Python converts raises C{ValueError}.
        """
        if not hasattr(sys, "get_int_max_str_digits"):
            raise unittest.SkipTest("this Python has no limit on an int's digits")
        digits = sys.get_int_max_str_digits() + 1
        self.assertNotRESP3(b"(" + b"1" * digits + b"\r\n")

    def test_resp2Refuses(self):
        """
        Without C{resp3}, RESP3's type bytes are refused as before.
        """
        for kind in b"_#,(!=%~>|":
            decoder = RespDecoder(StoreError)
            error = self.assertRaises(ValueError, decoder.feed, bytes([kind]) + b"1\r\n")
            self.assertEqual(str(error), f"not a Redis reply: type byte {chr(kind)!r}")
            self.assertRaises(ValueError, decoder.feed, b"+OK\r\n")


class RESP3ServerTests(unittest.TestCase):
    """
    A real C{redis-server} speaking RESP3 after C{HELLO 3}: its replies, and the push that
    client-side caching sends, decoded.
    """

    def setUp(self):
        self.server = RedisServer()
        self.server.start()
        self.addCleanup(self.server.close)

    def connect(self):
        connection = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        self.addCleanup(connection.close)
        return connection

    def receive(self, connection, decoder, count):
        replies = []
        while len(replies) < count:
            data = connection.recv(65536)
            self.assertTrue(data, "redis-server closed the connection")
            replies += decoder.feed(data)
        self.assertEqual(len(replies), count)
        return replies

    def test_helloRepliesAndInvalidation(self):
        """
        After C{HELLO 3} the server's map, then the replies, then, once another connection
        changes a key this one read with tracking on, the invalidation push.
        """
        tracked = self.connect()
        decoder = resp3()
        tracked.sendall(
            encode_commands(
                [
                    [b"HELLO", b"3"],
                    [b"SET", b"k", b"v"],
                    [b"GET", b"k"],
                    [b"CLIENT", b"TRACKING", b"ON"],
                    [b"GET", b"k"],
                ]
            )
        )
        hello, *replies = self.receive(tracked, decoder, 5)
        self.assertIsInstance(hello, dict)
        self.assertEqual(hello[b"proto"], 3)
        self.assertEqual(hello[b"server"], b"redis")
        self.assertEqual(replies, ["OK", b"v", "OK", b"v"])

        other = self.connect()
        other.sendall(encode_commands([[b"SET", b"k", b"w"]]))
        self.assertEqual(self.receive(other, RespDecoder(StoreError), 1), ["OK"])
        self.assertEqual(self.receive(tracked, decoder, 1), [(b"invalidate", [b"k"])])
