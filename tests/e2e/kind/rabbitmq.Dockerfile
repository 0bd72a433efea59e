# RabbitMQ from Debian's rabbitmq-server package, for the kind e2e broker (tests/e2e/kind/rabbitmq.yaml).
# RABBITMQ_BASE is either a Debian 13 image, where the package is installed from the archive (the normal path), or
# an image whose root already holds it (the offline path: a debootstrapped Debian 13 root imported into docker,
# see offline/toolchain.sh). Either way: RabbitMQ 4 from Debian 13, numeric user 999, logs to stdout.
ARG RABBITMQ_BASE=debian:trixie-slim
FROM ${RABBITMQ_BASE}
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3008
RUN if ! dpkg -s rabbitmq-server >/dev/null 2>&1; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupmod --non-unique --gid 999 rabbitmq; \
    usermod --non-unique --uid 999 --gid 999 rabbitmq; \
    mkdir -p /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq/conf.d; \
    chown -R 999:999 /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq
ENV HOME=/var/lib/rabbitmq \
    RABBITMQ_LOGS=- \
    RABBITMQ_NODENAME=rabbit@localhost
USER 999:999
EXPOSE 5672
CMD ["rabbitmq-server"]
