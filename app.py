"""Entry point for Hugging Face Spaces and Docker: serves the PromptOnce web app.

Host and port come from ``GRADIO_SERVER_NAME`` (default 0.0.0.0) and ``PORT`` / ``GRADIO_SERVER_PORT``
(default 7860); see promptonce/ui/app.py for the other settings.
"""

from promptonce.ui import launch

if __name__ == "__main__":
    launch()
