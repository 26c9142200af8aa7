from trapline.services.cli import app

app()
