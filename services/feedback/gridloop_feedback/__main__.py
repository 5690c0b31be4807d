"""`python -m gridloop_feedback`: serve the feedback service on its port."""

from gridloop_events.service import serve

from .app import create_app
from .settings import FeedbackSettings


def main() -> None:
    settings = FeedbackSettings.from_env()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
