#!/usr/bin/env bash
# "Adding a New Region" (reference doc 001) as one pull request: Frankfurt 1 goes live for EU
# data residency, and its first tenant, hooli, is placed there. Run it in a clone of a state
# repo made by `cplane init` (the template's fra-1 is `planned`); it commits on a new branch
# `add-fra-1`, checks the commit as CI would, and prints the plan a reviewer sees.
#
#   ./examples/add-a-region.sh STATE_DIR            # then: git push origin add-fra-1, open the PR
#
# The Terraform and cluster bootstrap of the doc's first two steps happen outside cplane; the
# region's platform cluster (prod-fra-1) then pulls its bundle like any other cluster.
set -euo pipefail
state=${1:?usage: add-a-region.sh STATE_DIR}
cd "$state"
git checkout -q -b add-fra-1

# 1. The region goes live: cplane now renders its platform cluster prod-fra-1.
sed -i.bak 's/^  status: planned$/  status: live/' regions/fra-1.yaml && rm regions/fra-1.yaml.bak

# 2. Its first tenant: hooli, an EU customer, in fra-1 (zone w-hooli.fra-1.cogrion.com).
cat > workspaces/hooli.yaml <<'YAML'
# Hooli: EU data residency, production workspace in Frankfurt.
apiVersion: cplane/v1
kind: Workspace
metadata:
  name: hooli
spec:
  region: fra-1
  environment: prod
  account: hooli
  aws:
    accountId: "444444444444"
    roleArn: arn:aws:iam::444444444444:role/cogrion-provisioner
    externalId: hooli-2b9d41c7
  deletionPolicy: Retain
  stacks:
    - name: bff
    - name: trino
      values:
        workers: 2
YAML

git add regions/fra-1.yaml workspaces/hooli.yaml
git -c user.name="${GIT_AUTHOR_NAME:-cplane example}" -c user.email="${GIT_AUTHOR_EMAIL:-example@cplane.local}" \
  commit -qm "Add region fra-1 with its first tenant hooli" \
  -m "Reference doc 001, Adding a New Region: EU data residency."

# 3. What CI runs on the pull request (examples/github-actions.yml, examples/gitlab-ci.yml).
cplane validate
cplane plan --detailed-exitcode || test $? -eq 4
