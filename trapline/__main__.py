from trapline.services.cli.main import app

app()
