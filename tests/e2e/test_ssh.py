"""SSH access as the SDKs drive it: tokens with an expiry (stored hashed),
validation scoped to the sandbox's organization, revoke one (`?token=`) or
all (no token: what Python SDK 0.226.1's `revoke_ssh_access` sends)."""

from __future__ import annotations

from oci_images import api


def test_ssh_access_tokens_are_made_validated_and_revoked(daytona, server):
    sb = daytona.create()
    try:
        access = sb.create_ssh_access(expires_in_minutes=5)
        assert access.sandbox_id == sb.id and len(access.token) >= 32
        assert access.token in access.ssh_command and "-p" in access.ssh_command
        check = sb.validate_ssh_access(access.token)
        assert check.valid and check.sandbox_id == sb.id
        assert not sb.validate_ssh_access("not-a-token").valid
        # Revoking one by token leaves the others.
        other = sb.create_ssh_access(expires_in_minutes=5)
        status, body = api(server, "DELETE", f"/sandbox/{sb.id}/ssh-access?token={other.token}")
        assert status == 200 and body["id"] == sb.id
        assert not sb.validate_ssh_access(other.token).valid
        assert sb.validate_ssh_access(access.token).valid
        # The SDK's revoke sends no token: every token of the sandbox goes.
        sb.revoke_ssh_access(access.token)
        assert not sb.validate_ssh_access(access.token).valid
        # Bad expiries; unknown sandboxes.
        assert api(server, "POST", f"/sandbox/{sb.id}/ssh-access?expiresInMinutes=0")[0] == 400
        assert api(server, "POST", f"/sandbox/{sb.id}/ssh-access?expiresInMinutes=x")[0] == 400
        assert api(server, "POST", "/sandbox/no-such/ssh-access")[0] == 404
        # A deleted sandbox's tokens are gone with it.
        last = sb.create_ssh_access(expires_in_minutes=5)
    finally:
        sb.delete()
    status, body = api(server, "GET", f"/sandbox/ssh-access/validate?token={last.token}")
    assert status == 200 and body["valid"] is False, body
