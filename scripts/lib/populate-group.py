"""Adds N users and one group holding all of them to a running Samba AD DC,
fast: one transaction straight into sam.ldb (as samba-tool and
bench-populate.py do), not object by object over LDAP, which takes Samba
minutes at 30,000. Test set-up only.

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
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
start = time.time()
db.transaction_start()
try:
    members = []
    for i in range(n):
        dn = "CN=m%d,%s" % (i, parent)
        db.add({"dn": dn, "objectClass": "user", "sAMAccountName": "%s%d" % (prefix, i)})
        members.append(dn)
    db.add({"dn": "CN=%s,%s" % (group_cn, parent), "objectClass": "group", "sAMAccountName": group_sam,
            "member": members})
    db.transaction_commit()
except BaseException:
    db.transaction_cancel()
    raise
print("populated %d users and a group of them in %.1f s" % (n, time.time() - start), file=sys.stderr)
