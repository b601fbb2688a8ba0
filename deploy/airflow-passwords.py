"""Write the simple auth manager's passwords file from AIRFLOW_ADMIN_USERNAME / AIRFLOW_ADMIN_PASSWORD.

Airflow 3's simple auth manager has no `airflow users create` (that is the FAB provider's): its users are
[core] simple_auth_manager_users and their passwords a JSON file, which it fills with generated passwords (printed
to its log) for users missing from it. Writing the file before the api-server starts gives the admin the password
from the environment, never a generated one in a log; a new password takes effect at the next start.
"""

import json
import os
import sys

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
users = {os.environ["AIRFLOW_ADMIN_USERNAME"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}
os.makedirs(os.path.dirname(path), exist_ok=True)
descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(descriptor, "w") as file:
    json.dump(users, file)
print(f"simple auth manager: {len(users)} user(s) in {path}", file=sys.stderr)
