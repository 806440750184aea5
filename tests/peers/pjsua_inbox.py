"""A pjsua2 (PJSIP) phone that comes online and reads what waited for its user: it registers
through hedgewitch and prints one line per instant message it receives, in order, with the
sender and whether the message carried a Date header, until it has COUNT or SECONDS pass.

usage: pjsua_inbox.py SERVER_PORT LOCAL_PORT DOMAIN USER PASSWORD COUNT SECONDS
"""
import os
import sys
import time

import pjsua2 as pj

server_port, local_port, domain, user, password, count, seconds = sys.argv[1:8]
server = f"sip:127.0.0.1:{server_port}"


def say(*words):
    print(*words, flush=True)


class Account(pj.Account):
    def __init__(self):
        super().__init__()
        self.reg = None
        self.got = 0

    def onRegState(self, prm):
        self.reg = prm.code
        say("REG", prm.code)

    def onInstantMessage(self, prm):
        self.got += 1
        dated = "Date:" in prm.rdata.wholeMsg
        tcp = prm.rdata.info.startswith("TCP") or " TCP " in prm.rdata.info
        body = prm.msgBody if len(prm.msgBody) < 200 else f"<{len(prm.msgBody)} bytes>"
        say("IM", prm.fromUri, prm.contentType, "dated" if dated else "undated", body)
        say("VIA", "tcp" if "TCP" in prm.rdata.wholeMsg.split("\r\n")[1] else "udp")


ep = pj.Endpoint()
ep.libCreate()
ep_cfg = pj.EpConfig()
ep_cfg.logConfig.level = 0
ep_cfg.logConfig.consoleLevel = 0
ep_cfg.uaConfig.threadCnt = 0
ep_cfg.uaConfig.mainThreadOnly = True
ep.libInit(ep_cfg)
tcfg = pj.TransportConfig()
tcfg.port = int(local_port)
tcfg.boundAddress = "127.0.0.1"
ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
# TCP on the same port too: a message too big for UDP comes over TCP (RFC 3261 §18.1.1).
ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcfg)
ep.libStart()
ep.audDevManager().setNullDev()

cfg = pj.AccountConfig()
cfg.idUri = f"sip:{user}@{domain}"
cfg.regConfig.registrarUri = server
cfg.regConfig.timeoutSec = 300
cfg.sipConfig.proxies.append(f"{server};lr")
cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
acc = Account()
acc.create(cfg)

end = time.time() + float(seconds)
while time.time() < end and acc.got < int(count):
    ep.libHandleEvents(50)
# A moment for the last 200 to leave.
end = time.time() + 0.5
while time.time() < end:
    ep.libHandleEvents(50)
say("DONE", acc.got)
acc.shutdown()
end = time.time() + 1
while time.time() < end:
    ep.libHandleEvents(50)
os._exit(0)
