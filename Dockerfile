# The one image behind every gradecast service; the compose file picks the subcommand.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0

RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /app gradecast

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a source change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md alembic.ini ./
COPY migrations/ migrations/
COPY services/ services/
# Editable: `gradecast migrate` finds alembic.ini and migrations/ next to the source tree.
RUN pip install --no-cache-dir -e .

# The source stays owned by root: the services only read it.
USER gradecast

ENTRYPOINT ["gradecast"]
CMD ["--help"]
