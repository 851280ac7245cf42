"""The Gradio web app. The only package that imports gradio."""
