# Exercises st2common.services.datastore.DatastoreService against a live
# Squall node. Argv: <api_url> <token>. Prints "ok" when every check holds;
# any failed check raises and exits non-zero with the traceback.

import logging
import sys

from st2common.services.datastore import DatastoreError, DatastoreService

api_url, token = sys.argv[1], sys.argv[2]
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
log = logging.getLogger("check")
ds = DatastoreService(log, "mypack", "MyClass", api_url, token)


def expect(actual, wanted, what):
    if actual != wanted:
        raise AssertionError("%s: wanted %r, got %r" % (what, wanted, actual))


expect(ds.set_value("count", 1), True, "set_value")
expect(ds.get_value("count"), "1", "get_value stores str(value)")
expect(ds.get_value("count", local=False), None, "the unprefixed name is absent")
expect(ds.get_value("missing"), None, "a missing key")
ds.set_value("secret", "s3", encrypt=True)
sealed = ds.get_value("secret")
if sealed in (None, "s3"):
    raise AssertionError("a secret read without decrypt came back %r" % sealed)
expect(ds.get_value("secret", decrypt=True), "s3", "decrypt")
ds.set_value("global", "g", local=False)
ds.set_value("tmp", "x", ttl=60)
names = sorted(kv.name for kv in ds.list_values())
expect(
    names,
    ["mypack.MyClass:count", "mypack.MyClass:secret", "mypack.MyClass:tmp"],
    "list_values",
)
tmp = [kv for kv in ds.list_values(prefix="tm")]
expect([(kv.name, kv.value) for kv in tmp], [("mypack.MyClass:tmp", "x")], "prefix")
if not tmp[0].expire_timestamp:
    raise AssertionError("ttl gave no expire_timestamp")
expect([kv.name for kv in ds.list_values(local=False, prefix="glob")], ["global"], "global")
expect(len(ds.list_values(limit=2)), 2, "limit")
expect([kv.name for kv in ds.list_values(offset=2)], ["mypack.MyClass:tmp"], "offset")
for call in (
    lambda: ds.get_value("count", scope="user"),
    lambda: ds.set_value("count", 2, scope="user"),
    lambda: ds.delete_value("count", scope="user"),
):
    try:
        call()
        raise AssertionError("scope=user was accepted")
    except ValueError as e:
        expect(str(e), "Scope user is unsupported.", "scope error")
expect(ds.delete_value("count"), True, "delete")
expect(ds.delete_value("count"), False, "delete again")
expect(ds.get_value("count"), None, "deleted")
expect(ds.get_user_info()["username"], "admin", "get_user_info")

bad = DatastoreService(log, "mypack", "MyClass", api_url, "not-a-token")
expect(bad.get_value("secret"), None, "get_value with a bad token")
try:
    bad.set_value("x", "y")
    raise AssertionError("set_value with a bad token succeeded")
except DatastoreError as e:
    expect(e.status, 401, "set_value refused")
print("ok")
