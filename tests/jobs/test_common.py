"""jobs/common.py: the runtime env never carries credentials; the code's identity without git."""

from __future__ import annotations

import json
import shutil

from jobs import common


def test_runtime_env_carries_no_credentials(monkeypatch):
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAcanary", "AWS_SECRET_ACCESS_KEY": "canary-secret",
               "AWS_SESSION_TOKEN": "canary-token"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    blob = json.dumps(common.runtime_env())
    assert not any(v in blob for v in secrets.values())
    assert not any(k in blob for k in secrets)


def test_git_commit_falls_back_to_a_content_hash_outside_a_checkout(repo_root, tmp_path, monkeypatch):
    monkeypatch.delenv("CTVLP_GIT_COMMIT", raising=False)
    copy = tmp_path / "submitted"
    for part in common.CODE_DIRS:
        shutil.copytree(repo_root / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(common, "REPO_ROOT", copy)
    first = common.git_commit()
    assert first.startswith("content-sha256:") and first == common.content_hash(copy)
    (copy / "jobs" / "launch.py").write_text((copy / "jobs" / "launch.py").read_text() + "\n# changed\n")
    assert common.git_commit() != first  # any code change changes the identity
