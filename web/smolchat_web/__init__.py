"""SmolChat's web side: assemble the static site (site.py), serve it with the headers the page
needs (server.py), and drive the real page in headless Chromium (headless.py)."""
