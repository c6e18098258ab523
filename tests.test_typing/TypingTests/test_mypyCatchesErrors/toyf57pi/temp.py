import txsession

x: int = txsession.Session
