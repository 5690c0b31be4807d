"""`python -m gridloop_escalation`: serve the escalation service on its port."""

from gridloop_events.service import serve

from .app import create_app
from .settings import EscalationSettings


def main() -> None:
    settings = EscalationSettings.from_env()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
