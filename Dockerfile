# The journey-tracker worker (and CLI) as an image, for docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY streams ./streams
RUN pip install --no-cache-dir . && useradd --create-home journey
USER journey
ENV JOURNEY_WEB_HOST=0.0.0.0 \
    JOURNEY_HOME=/home/journey/.cache/journey-tracker
EXPOSE 6066
CMD ["journey", "worker"]
