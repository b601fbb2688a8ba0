from shoprec.cli import app

app()
