"""Adds N users and one group holding all of them to a running Samba AD DC,
fast: one transaction straight into sam.ldb (as samba-tool and
bench-populate.py do), not object by object over LDAP, which takes Samba
minutes at 30,000. Test set-up only.

In ldb's batch mode (as `samba-tool domain join` and provisioning use it):
without it every add runs in a sub-transaction that copies the index lists
it touches (objectClass=user, objectCategory=person… hold every user), so
each add costs in proportion to the users already there and 30,000 took
over 20 minutes; with it, ~3 ms an add. A failed add fails the whole
transaction, which is what set-up wants anyway.

usage: /usr/bin/python3 populate-group.py SMB_CONF PARENT_DN N GROUP_CN GROUP_SAM USER_PREFIX

Users: CN=m<i>,PARENT_DN with sAMAccountName USER_PREFIX<i>; the group:
CN=GROUP_CN,PARENT_DN with sAMAccountName GROUP_SAM.
"""
import sys
import time

from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

conf, parent, n, group_cn, group_sam, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
lp = LoadParm()
lp.load(conf)
# The index cache sized as provisioning sizes it for batch mode (a prime
# near 200,000: several index records per user).
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp,
           options=["batch_mode:1", "transaction_index_cache_size:202481"])
start = time.time()
db.transaction_start()
try:
    members = []
    for i in range(n):
        dn = "CN=m%d,%s" % (i, parent)
        db.add({"dn": dn, "objectClass": "user", "sAMAccountName": "%s%d" % (prefix, i)})
        members.append(dn)
        if (i + 1) % 5000 == 0:
            print("  %d/%d users (%.1f s)" % (i + 1, n, time.time() - start), file=sys.stderr, flush=True)
    db.add({"dn": "CN=%s,%s" % (group_cn, parent), "objectClass": "group", "sAMAccountName": group_sam,
            "member": members})
    db.transaction_commit()
except BaseException:
    db.transaction_cancel()
    raise
print("populated %d users and a group of them in %.1f s" % (n, time.time() - start), file=sys.stderr)
