#!/usr/bin/env bash
# Install Label Studio 1.23.x into its own venv, .venv-labelstudio/ (its many pinned dependencies
# never touch .venv), plus a migrated empty database the tests copy so a server starts in ~30 s
# instead of ~140 s. Idempotent: a second run only checks the version (under a second).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LS_SPEC=${LS_SPEC:-label-studio==1.23.*}
# sentry-sdk 3 (2026-12) refuses the options Label Studio 1.23 starts it with ("Unknown option
# 'send_default_pii'"): the server and its database migration die at import.
SENTRY_SPEC="sentry-sdk<3"
VENV=.venv-labelstudio
TEMPLATE=$VENV/al-db-template
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(not m.version('label-studio').startswith('1.23.'))" 2>/dev/null; then
  echo "labelstudio: installing $LS_SPEC into $VENV (a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "$LS_SPEC" "$SENTRY_SPEC"
  rm -rf "$TEMPLATE"
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(int(m.version('sentry-sdk').split('.')[0]) >= 3)"; then
  echo "labelstudio: $SENTRY_SPEC into $VENV (Label Studio 1.23 fails to start with sentry-sdk 3)"
  "$VENV/bin/python" -m pip install -q "$SENTRY_SPEC"
fi
if [ ! -f "$TEMPLATE/label_studio.sqlite3" ]; then
  echo "labelstudio: migrating an empty database into $TEMPLATE (a few minutes)"
  rm -rf "$TEMPLATE.tmp" && mkdir -p "$TEMPLATE.tmp"
  site=$("$VENV/bin/python" -c "import label_studio, os; print(os.path.dirname(label_studio.__file__))")
  (cd "$site" && LABEL_STUDIO_BASE_DATA_DIR="$OLDPWD/$TEMPLATE.tmp" LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false \
     DJANGO_SETTINGS_MODULE=core.settings.label_studio "$OLDPWD/$VENV/bin/python" manage.py migrate --no-input >/dev/null)
  mkdir -p "$TEMPLATE" && mv "$TEMPLATE.tmp/label_studio.sqlite3" "$TEMPLATE/" && rm -rf "$TEMPLATE.tmp"
fi
echo "labelstudio: label-studio $("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('label-studio'))") in $VENV"
