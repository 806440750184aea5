"""bob as a PJSIP (pjsua2) phone, with alice (a baresip phone) as his buddy: he registers,
watches her and prints what he sees (from each NOTIFY's PIDF), publishes "away" once he sees
her online and the file GO exists (the test makes it once alice's phone shows him online),
then waits until he sees her offline (she publishes it), or SECONDS pass.

usage: pjsua_bob_watches.py SERVER_PORT LOCAL_PORT DOMAIN BOB_PASSWORD SECONDS GO
"""
import os
import sys
import time
import xml.etree.ElementTree as ET

import pjsua2 as pj

server_port, local_port, domain, bob_pw, seconds, go = sys.argv[1:7]
server = f"sip:127.0.0.1:{server_port}"


def say(*words):
    print(*words, flush=True)


class Buddy(pj.Buddy):
    """What it shows is read from each NOTIFY's PIDF body (pjsua2's getInfo aborts in this
    build on documents with an RPID person)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def onBuddyEvSubState(self, prm):
        e = prm.e
        if e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        try:
            msg = e.body.tsxState.src.rdata.wholeMsg
        except Exception:
            return
        if not msg.startswith("NOTIFY") or "\r\n\r\n" not in msg:
            return
        body = msg.split("\r\n\r\n", 1)[1]
        if "<presence" not in body:
            return
        doc = ET.fromstring(body)
        basic = doc.find(".//{urn:ietf:params:xml:ns:pidf}basic")
        online = basic is not None and basic.text.strip() == "open"
        line = "online" if online else "offline"
        self.seen.append(line)
        say("bob SEES alice", line)


class Account(pj.Account):
    def __init__(self):
        super().__init__()
        self.reg = None

    def onRegState(self, prm):
        self.reg = prm.code
        say("bob REG", prm.code)


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
ep.libStart()
ep.audDevManager().setNullDev()


def pump(seconds, until=lambda: False):
    end = time.time() + seconds
    while time.time() < end and not until():
        ep.libHandleEvents(50)


cfg = pj.AccountConfig()
cfg.idUri = f"sip:bob@{domain}"
cfg.regConfig.registrarUri = server
cfg.regConfig.timeoutSec = 300
cfg.sipConfig.proxies.append(f"{server};lr")
cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", "bob", 0, bob_pw))
cfg.presConfig.publishEnabled = True
bob = Account()
bob.create(cfg)
pump(10, lambda: bob.reg is not None)

bcfg = pj.BuddyConfig()
bcfg.uri = f"sip:alice@{domain}"
bcfg.subscribe = True
alice = Buddy()
alice.create(bob, bcfg)
pump(float(seconds), lambda: "online" in alice.seen)
pump(float(seconds), lambda: os.path.exists(go))

ps = pj.PresenceStatus()
ps.status = pj.PJSUA_BUDDY_STATUS_ONLINE
ps.activity = pj.PJRPID_ACTIVITY_AWAY
ps.note = "Away"
bob.setOnlineStatus(ps)
say("bob PUBLISHED away")
pump(float(seconds), lambda: alice.seen[-1:] == ["offline"] and "online" in alice.seen)
say("DONE")
bob.shutdown()
pump(1)
os._exit(0)
