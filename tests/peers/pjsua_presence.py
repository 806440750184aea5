"""Two PJSIP (pjsua2) accounts, alice and bob, each watching the other (buddies with
subscriptions); bob publishes his presence. Steps, each printed as it is seen:

  1. both register: each sees the other online;
  2. bob publishes "away": alice sees bob away;
  3. bob dials *78 (do-not-disturb on): alice sees bob busy;
  4. bob dials *79 (do-not-disturb off), then alice calls bob and he answers: alice sees
     bob on the phone, and away again once she hangs up;
  5. alice (who never published) unregisters: bob sees her offline.

usage: pjsua_presence.py SERVER_PORT LOCAL_PORT DOMAIN ALICE_PASSWORD BOB_PASSWORD
"""
import os
import sys
import time
import xml.etree.ElementTree as ET

import pjsua2 as pj

server_port, local_port, domain, alice_pw, bob_pw = sys.argv[1:6]
server = f"sip:127.0.0.1:{server_port}"


def say(*words):
    print(*words, flush=True)


class Buddy(pj.Buddy):
    """A watched contact. What it shows is read from each NOTIFY's PIDF body: pjsua2's own
    BuddyInfo (getInfo) aborts with std::bad_alloc in this build once a document carries an
    RPID person, whoever wrote it (PJSIP's own PUBLISH body does the same)."""

    def __init__(self, owner, name):
        super().__init__()
        self.owner = owner
        self.name = name
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
        activity = "-"
        for a in ("away", "busy", "on-the-phone"):
            if doc.find(f".//{{urn:ietf:params:xml:ns:pidf:rpid}}{a}") is not None:
                activity = a
        line = f"{'online' if online else 'offline'} {activity}"
        self.seen.append(line)
        say(self.owner, "SEES", self.name, line)


class Call(pj.Call):
    def __init__(self, acc):
        super().__init__(acc)
        self.done = False

    def onCallState(self, prm):
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.done = True
            say("bob", "DIALLED", ci.lastStatusCode, ci.lastReason)


class Talk(pj.Call):
    """A call between the two (bob's side answers it)."""

    def __init__(self, acc, name, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.name = name

    def onCallState(self, prm):
        ci = self.getInfo()
        say(self.name, "CALL", ci.stateText)


class Account(pj.Account):
    def __init__(self, name):
        super().__init__()
        self.name = name
        self.reg = None
        self.calls = []

    def onRegState(self, prm):
        self.reg = prm.code
        say(self.name, "REG", prm.code)

    def onIncomingCall(self, prm):
        call = Talk(self, self.name, prm.callId)
        self.calls.append(call)
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)


def account(name, password, publish):
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:{name}@{domain}"
    cfg.regConfig.registrarUri = server
    cfg.regConfig.timeoutSec = 300
    cfg.sipConfig.proxies.append(f"{server};lr")
    cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", name, 0, password))
    cfg.presConfig.publishEnabled = publish
    acc = Account(name)
    acc.create(cfg)
    return acc


def pump(ep, seconds, until=lambda: False):
    end = time.time() + seconds
    while time.time() < end and not until():
        ep.libHandleEvents(50)


def watch(owner, acc, name):
    cfg = pj.BuddyConfig()
    cfg.uri = f"sip:{name}@{domain}"
    cfg.subscribe = True
    b = Buddy(owner, name)
    b.create(acc, cfg)
    return b


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

alice = account("alice", alice_pw, False)
bob = account("bob", bob_pw, True)
pump(ep, 10, lambda: alice.reg is not None and bob.reg is not None)
bob_seen_by_alice = watch("alice", alice, "bob")
alice_seen_by_bob = watch("bob", bob, "alice")
pump(ep, 10, lambda: any(s.startswith("online") for s in bob_seen_by_alice.seen)
     and any(s.startswith("online") for s in alice_seen_by_bob.seen))

ps = pj.PresenceStatus()
ps.status = pj.PJSUA_BUDDY_STATUS_ONLINE
ps.activity = pj.PJRPID_ACTIVITY_AWAY
ps.note = "Away"
ps.statusText = "Away"
bob.setOnlineStatus(ps)
pump(ep, 10, lambda: "online away" in bob_seen_by_alice.seen)

call = Call(bob)
call.makeCall(f"sip:*78@{domain}", pj.CallOpParam(True))
pump(ep, 10, lambda: "online busy" in bob_seen_by_alice.seen)

call = Call(bob)
call.makeCall(f"sip:*79@{domain}", pj.CallOpParam(True))
pump(ep, 10, lambda: bob_seen_by_alice.seen[-1:] == ["online away"])

talk = Talk(alice, "alice")
talk.makeCall(f"sip:bob@{domain}", pj.CallOpParam(True))
pump(ep, 10, lambda: "online on-the-phone" in bob_seen_by_alice.seen)
talk.hangup(pj.CallOpParam())
pump(ep, 10, lambda: bob_seen_by_alice.seen[-1:] == ["online away"])

# alice's phone goes; she never published: offline once unregistered.
alice.shutdown()
pump(ep, 10, lambda: alice_seen_by_bob.seen[-1:] == ["offline -"])
say("DONE")
bob.shutdown()
pump(ep, 1)
os._exit(0)
