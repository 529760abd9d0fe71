"""Alembic environment: runs on the connection handed over by study.db.upgrade(), or on the
URL given with `-x url=...` when alembic is called by hand."""
from alembic import context
from sqlalchemy import create_engine

from study.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with: alembic -c study/alembic.ini -x url=URL upgrade head")
    with create_engine(url).connect() as conn:
        run(conn)
