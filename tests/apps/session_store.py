"""
Twisted's web-in-60 "session-store" example, as the tutorial gives it: an adapter registered
for Twisted's own Session class, used through C{ICounter(request.getSession())}.
"""

from twisted.python.components import registerAdapter
from twisted.web.resource import Resource
from twisted.web.server import Session
from zope.interface import Attribute, Interface, implementer


class ICounter(Interface):
    value = Attribute("An int value which counts up once per page view.")


@implementer(ICounter)
class Counter:
    def __init__(self, session):
        self.value = 0


registerAdapter(Counter, Session, ICounter)


class CounterResource(Resource):
    def render_GET(self, request):
        session = request.getSession()
        counter = ICounter(session)
        counter.value += 1
        return ("Visit #%d for you!" % (counter.value,)).encode("utf-8")  # noqa: UP031 (as the tutorial has it)


resource = CounterResource()
