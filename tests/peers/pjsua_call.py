"""Two PJSIP (pjsua2) accounts register through hedgewitch, alice calls bob, bob answers,
alice hangs up, then alice sends bob an instant message (SIP MESSAGE). Prints one line per
event for the Rust test to check.

usage: pjsua_call.py SERVER_PORT LOCAL_PORT DOMAIN ALICE_PASSWORD BOB_PASSWORD
"""
import os
import sys
import time

import pjsua2 as pj

server_port, local_port, domain, alice_pw, bob_pw = sys.argv[1:6]
server = f"sip:127.0.0.1:{server_port}"


def say(*words):
    print(*words, flush=True)


class Call(pj.Call):
    def __init__(self, acc, name, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.name = name
        self.state = None

    def onCallState(self, prm):
        ci = self.getInfo()
        self.state = ci.state
        say(self.name, "CALL", ci.stateText, ci.lastStatusCode)


class Account(pj.Account):
    def __init__(self, name):
        super().__init__()
        self.name = name
        self.calls = []
        self.reg = None
        self.im_status = None

    def onRegState(self, prm):
        self.reg = prm.code
        say(self.name, "REG", prm.code)

    def onInstantMessage(self, prm):
        say(self.name, "IM", prm.msgBody)

    def onInstantMessageStatus(self, prm):
        self.im_status = prm.code
        say(self.name, "IMSTATUS", prm.code)

    def onIncomingCall(self, prm):
        call = Call(self, self.name, prm.callId)
        self.calls.append(call)
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)


def account(name, password):
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:{name}@{domain}"
    cfg.regConfig.registrarUri = server
    cfg.regConfig.timeoutSec = 300
    cfg.sipConfig.proxies.append(f"{server};lr")
    cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", name, 0, password))
    acc = Account(name)
    acc.create(cfg)
    return acc


def pump(ep, seconds, until=lambda: False):
    end = time.time() + seconds
    while time.time() < end and not until():
        ep.libHandleEvents(50)


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

alice = account("alice", alice_pw)
bob = account("bob", bob_pw)
pump(ep, 10, lambda: alice.reg is not None and bob.reg is not None)

if alice.reg == 200 and bob.reg == 200:
    call = Call(alice, "alice")
    alice.calls.append(call)
    call.makeCall(f"sip:bob@{domain}", pj.CallOpParam(True))
    pump(ep, 10, lambda: call.state == pj.PJSIP_INV_STATE_CONFIRMED)
    pump(ep, 1)
    if call.state == pj.PJSIP_INV_STATE_CONFIRMED:
        call.hangup(pj.CallOpParam())
        pump(ep, 5, lambda: all(c.state == pj.PJSIP_INV_STATE_DISCONNECTED
                                  for c in alice.calls + bob.calls))

    buddy_cfg = pj.BuddyConfig()
    buddy_cfg.uri = f"sip:bob@{domain}"
    buddy_cfg.subscribe = False
    buddy = pj.Buddy()
    buddy.create(alice, buddy_cfg)
    im = pj.SendInstantMessageParam()
    im.content = "hello bob, from pjsua"
    buddy.sendInstantMessage(im)
    pump(ep, 10, lambda: alice.im_status is not None)
    pump(ep, 0.5)

say("DONE")
# Unregister, then leave without tearing pjsua down: destroying finished pjsua2 Call objects
# trips an assertion in PJSIP 2.15 (pjsua_call_set_user_data), which is not what we test.
alice.shutdown()
bob.shutdown()
pump(ep, 1)
os._exit(0)
