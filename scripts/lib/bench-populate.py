"""Fills a Samba AD DC's database with a benchmark directory, fast: one
transaction straight into sam.ldb (the way samba-tool works on a DC), not
object by object over LDAP. Not part of what the benchmark measures.

usage: /usr/bin/python3 bench-populate.py SMB_CONF BASE_DN USERS GROUPS

Under OU=Bench: USERS users (u000000…) in OU=People, GROUPS groups
(g00000…) in OU=Groups; each user in 5 groups on average (1 to 9); one group
in five is nested in an earlier group (no cycles). Deterministic (seed 42).
"""
import random
import sys
import time

from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

conf, base, n_users, n_groups = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lp = LoadParm()
lp.load(conf)
# ldb's batch mode, as provisioning and populate-group.py use it: without it
# every add copies the index lists it touches (objectClass=user holds every
# user), so each add costs in proportion to the users already there.
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp,
           options=["batch_mode:1", "transaction_index_cache_size:%d" % max(202481, n_users * 8 + 1)])
rnd = random.Random(42)
realm = ".".join(p.split("=", 1)[1] for p in base.split(",")).lower()
ou = "OU=Bench," + base
titles = ["Engineer", "Analyst", "Manager", "Designer", "Accountant", "Consultant", "Technician"]
depts = ["Engineering", "Sales", "Finance", "Support", "Marketing", "Operations"]

start = time.time()
db.transaction_start()
try:
    for dn in (ou, "OU=People," + ou, "OU=Groups," + ou):
        db.add({"dn": dn, "objectClass": "organizationalUnit"})
    members = [[] for _ in range(n_groups)]
    for i in range(n_users):
        sam = "u%06d" % i
        dn = "CN=User %06d,OU=People,%s" % (i, ou)
        db.add({
            "dn": dn,
            "objectClass": "user",
            "sAMAccountName": sam,
            "userPrincipalName": "%s@%s" % (sam, realm),
            "givenName": "Given%d" % i,
            "sn": "Family%d" % i,
            "displayName": "User %06d" % i,
            "mail": "%s@%s" % (sam, realm),
            "title": rnd.choice(titles),
            "department": rnd.choice(depts),
        })
        if n_groups:
            for g in rnd.sample(range(n_groups), min(n_groups, rnd.randint(1, 9))):
                members[g].append(dn)
        if (i + 1) % 2000 == 0:
            print("  %d/%d users" % (i + 1, n_users), file=sys.stderr, flush=True)
    group_dn = ["CN=Group %05d,OU=Groups,%s" % (g, ou) for g in range(n_groups)]
    for g in range(1, n_groups):
        if rnd.random() < 0.2:
            members[rnd.randrange(0, g)].append(group_dn[g])
    # Nested groups must exist before they are members: add from the last.
    for g in reversed(range(n_groups)):
        msg = {"dn": group_dn[g], "objectClass": "group", "sAMAccountName": "g%05d" % g,
               "description": "Benchmark group %d" % g}
        if members[g]:
            msg["member"] = members[g]
        db.add(msg)
    db.transaction_commit()
except BaseException:
    db.transaction_cancel()
    raise
links = sum(len(m) for m in members)
print("populated %d users, %d groups, %d memberships in %.1f s" % (n_users, n_groups, links, time.time() - start),
      file=sys.stderr)
