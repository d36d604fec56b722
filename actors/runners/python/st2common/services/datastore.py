# st2common.services.datastore: the datastore client behind
# action_service and sensor_service, speaking Squall's (StackStorm's) REST
# API: /keys for values, /user for the caller. Standard library only.
#
# Semantics are StackStorm's BaseDatastoreService: local names get the
# prefix "<pack>.<ClassName>:", only the system scope is supported,
# get_value answers None on any error, set_value stores str(value) and
# raises when the API refuses, delete_value answers True or False.

import json
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["DatastoreService", "KeyValuePair", "DatastoreError", "ApiClient"]

SYSTEM_SCOPE = "system"
KEY_SEPARATOR = ":"
# Seconds one API call may take.
REQUEST_TIMEOUT = 30


class DatastoreError(Exception):
    """The API refused a datastore call or could not be reached."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class KeyValuePair(object):
    """One datastore item as the API shows it (st2client's KeyValuePair):
    every field of the answer is an attribute (name, value, scope,
    secret, encrypted, expire_timestamp, ...)."""

    def __init__(self, **fields):
        self.id = None
        self.name = None
        self.value = None
        self.scope = SYSTEM_SCOPE
        self.secret = False
        self.encrypted = False
        self.expire_timestamp = None
        self.__dict__.update(fields)

    def to_dict(self):
        return dict(self.__dict__)

    def __repr__(self):
        return "<KeyValuePair name=%r scope=%r>" % (self.name, self.scope)


class DatastoreService(object):
    """Datastore access for one class of one pack, as the user of `token`
    against the v1 API at `api_url` (e.g. http://127.0.0.1:9101/api/v1)."""

    def __init__(self, logger, pack_name, class_name, api_url, token):
        self._logger = logger
        self._pack_name = pack_name
        self._class_name = class_name
        self._api_url = (api_url or "").rstrip("/")
        self._token = token

    def get_user_info(self):
        """The caller as the API knows it (GET /user)."""
        self._logger.debug("Retrieving user information")
        return self._call("GET", "/user")

    def list_values(self, local=True, prefix=None, limit=None, offset=0):
        """Items whose name starts with the (local) prefix, as KeyValuePair
        objects, at most `limit` of them after skipping `offset`."""
        self._logger.debug("Retrieving all the values from the datastore")
        key_prefix = self._full_prefix(local, prefix)
        query = {}
        if key_prefix:
            query["prefix"] = key_prefix
        items = self._call("GET", "/keys", query=query) or []
        start = int(offset or 0)
        items = items[start:]
        if limit:
            items = items[: int(limit)]
        return [KeyValuePair(**item) for item in items]

    def get_value(self, name, local=True, scope=SYSTEM_SCOPE, decrypt=False):
        """The item's value, or None when it does not exist or cannot be
        read (the error is logged)."""
        self._check_scope(scope)
        name = self._full_name(name, local)
        self._logger.debug("Retrieving value from the datastore (name=%s)", name)
        try:
            item = self._call(
                "GET",
                "/keys/" + _quote(name),
                query={"decrypt": str(bool(decrypt)).lower(), "scope": scope},
            )
        except Exception as e:
            self._logger.exception(
                "Exception retrieving value from datastore (name=%s): %s", name, e
            )
            return None
        if item:
            return item.get("value")
        return None

    def set_value(
        self, name, value, ttl=None, local=True, scope=SYSTEM_SCOPE, encrypt=False
    ):
        """Stores str(value), a secret when `encrypt`, expiring after `ttl`
        seconds when given. True; raises DatastoreError when refused."""
        self._check_scope(scope)
        name = self._full_name(name, local)
        self._logger.debug("Setting value in the datastore (name=%s)", name)
        body = {"name": name, "value": str(value), "scope": scope}
        if encrypt:
            body["secret"] = True
        if ttl:
            body["ttl"] = int(ttl)
        self._call("PUT", "/keys/" + _quote(name), body=body)
        return True

    def delete_value(self, name, local=True, scope=SYSTEM_SCOPE):
        """True when the item was deleted, False otherwise (logged)."""
        self._check_scope(scope)
        name = self._full_name(name, local)
        self._logger.debug("Deleting value from the datastore (name=%s)", name)
        try:
            self._call("DELETE", "/keys/" + _quote(name), query={"scope": scope})
        except Exception as e:
            self._logger.exception(
                "Exception deleting value from datastore (name=%s): %s", name, e
            )
            return False
        return True

    def get_api_client(self):
        """A client of the API as the same user, for what packs call
        through st2client's `Client` (today `webhooks.post_generic_webhook`,
        which StackStorm's core.inject_trigger uses)."""
        return ApiClient(self)

    def _check_scope(self, scope):
        if scope != SYSTEM_SCOPE:
            raise ValueError("Scope %s is unsupported." % scope)

    def _local_prefix(self):
        return "%s.%s%s" % (self._pack_name, self._class_name, KEY_SEPARATOR)

    def _full_name(self, name, local):
        return self._local_prefix() + name if local else name

    def _full_prefix(self, local, prefix):
        if local:
            return self._local_prefix() + (prefix or "")
        return prefix

    def _call(self, method, path, query=None, body=None):
        if not self._api_url:
            raise DatastoreError("no API URL: ST2_API_URL is not set")
        url = self._api_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {"Accept": "application/json"}
        if self._token:
            headers["X-Auth-Token"] = self._token
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
                text = answer.read()
        except urllib.error.HTTPError as e:
            raise DatastoreError(
                "%s %s: %s %s" % (method, path, e.code, _fault(e)), status=e.code
            ) from None
        except urllib.error.URLError as e:
            raise DatastoreError("%s %s: %s" % (method, path, e.reason)) from None
        if not text:
            return None
        return json.loads(text)


class ApiClient(object):
    """The part of st2client's `Client` that packs use through
    `datastore_service.get_api_client()`."""

    def __init__(self, service):
        self.webhooks = _Webhooks(service)


class _Webhooks(object):
    def __init__(self, service):
        self._service = service

    def post_generic_webhook(self, trigger, payload=None, trace_tag=None):
        """POST /webhooks/st2: dispatches a trigger instance; answers the
        API's echo of what was accepted."""
        body = {"trigger": trigger, "payload": payload or {}}
        if trace_tag:
            body["trace_tag"] = trace_tag
        return self._service._call("POST", "/webhooks/st2", body=body)


def _quote(name):
    return urllib.parse.quote(name, safe="")


def _fault(error):
    """The API's own message from an error answer."""
    try:
        body = json.loads(error.read() or b"null")
    except ValueError:
        return error.reason
    if isinstance(body, dict) and body.get("faultstring"):
        return body["faultstring"]
    return error.reason
