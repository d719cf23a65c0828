#!/usr/bin/env bash
# Java 17+ and Maven are needed to fetch and run Kafka; say so plainly when they are missing.
set -euo pipefail
if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  echo "Java 17 or newer is needed (Debian: apt-get install openjdk-17-jdk-headless)" >&2; exit 1
fi
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
major=$("$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
if [ -z "$major" ] || [ "$major" -lt 17 ]; then
  echo "Java 17 or newer is needed; $java_bin is version ${major:-unknown}" >&2; exit 1
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "Maven is needed to fetch the Kafka jars (Debian: apt-get install maven)" >&2; exit 1
fi
