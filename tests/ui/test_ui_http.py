"""The UI and the admin docs over plain HTTP: login, CSRF, tenant walls, redirects, vendored assets."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
from ui_kit import UiGateway, csrf_of, login_client


def test_root_and_admin_redirect(gateway: UiGateway) -> None:
    """``/`` leads to the UI and ``/admin/`` to the Swagger page (no more 404s for new users)."""
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        assert client.get("/").headers["location"] == "/ui/"
        assert client.get("/admin/").headers["location"] == "/admin/docs"
        assert client.get("/ui/").headers["location"] == "/ui/login"


def test_swagger_assets_are_local(gateway: UiGateway) -> None:
    """The admin docs page names only assets the gateway serves itself, and each of them answers 200."""
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        page = client.get("/admin/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
        assert urls, page.text
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
        for url in (u for u in urls if u.startswith("/admin/static/")):
            assert client.get(url).status_code == 200, url
        assert "validatorUrl" in page.text and '"validatorUrl": null' in page.text


def test_login_with_an_unknown_key_is_refused(gateway: UiGateway) -> None:
    """A wrong key gets the login page again with a 401, and no session."""
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        token = csrf_of(client.get("/ui/login").text)
        answer = client.post("/ui/login", data={"key": "ck-nope.wrong", "csrf": token})
        assert answer.status_code == 401
        assert client.get("/ui/budgets").status_code == 303


def test_post_without_the_csrf_token_changes_nothing(gateway: UiGateway) -> None:
    """A budget form posted without (or with a wrong) CSRF token is a 403 and writes no budget."""
    client = login_client(gateway.url, gateway.admin_key)
    before = gateway.engine.store.budgets()
    form = {"level": "tenant", "tenant": "acme", "limit_usd": "1", "period": "day", "timezone": "UTC"}
    assert client.post("/ui/budgets", data=form).status_code == 403
    assert client.post("/ui/budgets", data={**form, "csrf": "forged"}).status_code == 403
    assert gateway.engine.store.budgets() == before
    token = csrf_of(client.get("/ui/budgets").text)
    assert client.post("/ui/budgets", data={**form, "csrf": token}).status_code == 303
    assert {b.id for b in gateway.engine.store.budgets()} - {b.id for b in before} == {"tenant:day:replay|acme"}


def test_tenant_key_sees_only_its_tenant(gateway: UiGateway) -> None:
    """A tenant's session gets a 403 for another tenant by URL, and its pages never name the other tenant's data."""
    gateway.call()
    client = login_client(gateway.url, gateway.acme_key)
    for url in ("/ui/?tenant=chatdev", "/ui/requests?tenant=chatdev", "/ui/requests/rows?tenant=chatdev"):
        assert client.get(url).status_code == 403, url
    for url in ("/ui/cache?tenant=chatdev", "/ui/?group_by=key&tenant=chatdev"):
        assert client.get(url).status_code == 403, url
    for url in ("/ui/", "/ui/requests", "/ui/budgets", "/ui/defenses", "/ui/routing", "/ui/cache",
                "/ui/defenses/feed", "/ui/actions", "/ui/wallets", "/ui/?group_by=key"):
        page = client.get(url)
        assert page.status_code == 200, url
        assert "chatdev" not in page.text, url  # every replayed record and scope names tenant chatdev
    assert "replay|acme" in client.get("/ui/budgets").text  # its own conversation account is there
    admin_only = client.post("/ui/defenses/kill", data={"level": "namespace", "scope": "replay", "reason": "x",
                                                        "confirm": "yes", "csrf": csrf_of(client.get("/ui/").text)})
    assert admin_only.status_code == 403
    assert not [k for k in gateway.engine.store.states("kill_switch") if k.record.get("tripped")]


def test_tenant_key_cannot_read_another_tenant_by_api(gateway: UiGateway) -> None:
    """The admin API answers 403 to a tenant key asking for another tenant's usage or the whole report."""
    headers = {"Authorization": f"Bearer {gateway.acme_key}"}
    with httpx.Client(base_url=gateway.url, timeout=20, headers=headers) as client:
        assert client.get("/admin/usage", params={"tenant": "chatdev"}).status_code == 403
        assert client.get("/admin/report").status_code == 403
        accounts = client.get("/admin/budgets").json()
        assert all("chatdev" not in a["scope"] for a in accounts)


def test_a_revoked_key_ends_its_session(gateway: UiGateway) -> None:
    """Revoking the key a session logged in with sends the next page to the login form."""
    plaintext = gateway.add_key("acme")
    client = login_client(gateway.url, plaintext)
    assert client.get("/ui/").status_code == 200
    key_id = plaintext.removeprefix("ck-").split(".")[0]  # a key is ck-<id>.<secret>
    assert gateway.keys.revoke(key_id, datetime.now(UTC))
    assert client.get("/ui/").status_code == 303


def test_bad_range_is_a_400_naming_the_field(gateway: UiGateway) -> None:
    """An unreadable date or group is a 400 page that names the field and the expected form."""
    client = login_client(gateway.url, gateway.admin_key)
    answer = client.get("/ui/", params={"start": "yesterday"})
    assert answer.status_code == 400 and "start" in answer.text and "YYYY-MM-DD" in answer.text
    answer = client.get("/ui/", params={"group_by": "colour"})
    assert answer.status_code == 400 and "group_by" in answer.text
    answer = client.get("/ui/actions", params={"status": "finished"})
    assert answer.status_code == 400 and "status" in answer.text and "pending_approval" in answer.text
    assert client.get("/ui/wallets", params={"period": "fortnight"}).status_code == 400
