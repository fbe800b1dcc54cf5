//! Exact plans for every case the planner must handle.

use super::*;

/// Fixture builder: a prod workspace on sgp-1.
fn ws(id: &str) -> DesiredWorkspace {
    DesiredWorkspace {
        id: id.into(),
        region: "sgp-1".into(),
        environment: "prod".into(),
        account: format!("{id}-corp"),
        aws_account_id: "111111111111".into(),
        aws_region: "ap-southeast-1".into(),
        role_arn: "arn:aws:iam::111111111111:role/cogrion-provisioner".into(),
        external_id: format!("{id}-ext"),
        zone_name: format!("w-{id}.sgp-1.cogrion.com"),
        parent_zone: "sgp-1.cogrion.com".into(),
        bff_url: format!("https://bff.w-{id}.sgp-1.cogrion.com"),
        deletion_policy: Policy::Retain,
    }
}

fn desired(list: &[DesiredWorkspace]) -> BTreeMap<String, DesiredWorkspace> {
    list.iter().map(|w| (w.id.clone(), w.clone())).collect()
}

/// The observed state after `w` was fully provisioned.
fn provisioned(observed: &mut Observed, w: &DesiredWorkspace) {
    observed.workspaces.insert(
        w.id.clone(),
        ObservedWorkspace {
            applied: w.clone(),
            generation: 1,
            status: Status::Active,
        },
    );
    for kind in [
        StepKind::CreateZone,
        StepKind::DelegateZone,
        StepKind::RequestCertificate,
        StepKind::ValidationRecords,
        StepKind::AwaitCertificate,
    ] {
        let result = (kind == StepKind::CreateZone).then(|| StepResult::CreateZone {
            zone_id: "Z1".into(),
            name_servers: vec!["ns-1.example".into(), "ns-2.example".into()],
        });
        observed.journal.insert(
            (w.id.clone(), kind),
            JournalEntry {
                state: JournalState::Done,
                result,
            },
        );
    }
    observed.tenants.insert(
        w.id.clone(),
        TenantRow {
            workspace_id: format!("w-{}", w.id),
            region: w.region.clone(),
            delegated_zone: w.zone_name.clone(),
            status: "active".into(),
            bff_url: w.bff_url.clone(),
        },
    );
    observed.lookup.insert(
        w.id.clone(),
        LookupRow {
            region: w.region.clone(),
            bff_url: w.bff_url.clone(),
        },
    );
}

/// `(workspace, symbol, description, after)` of every step: compact and exact.
fn steps(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| {
            format!(
                "{} {} {} after {:?} ({})",
                s.workspace,
                s.action.symbol(),
                s.action,
                s.after,
                s.reason
            )
        })
        .collect()
}

#[test]
fn new_workspace_gets_the_full_provisioning_flow() {
    let acme = ws("acme");
    let plan = plan(
        &desired(std::slice::from_ref(&acme)),
        &Observed::default(),
        Options::default(),
    );
    assert_eq!(
        steps(&plan),
        [
            "acme ~ db workspaces row (status provisioning) after [] (new workspace)",
            "acme + route53 hosted zone w-acme.sgp-1.cogrion.com (tenant account) after [0] (new workspace)",
            "acme + route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account) after [1] (new workspace)",
            "acme + acm certificate *.w-acme.sgp-1.cogrion.com + w-acme.sgp-1.cogrion.com (tenant account) after [0] (new workspace)",
            "acme + route53 validation CNAMEs in w-acme.sgp-1.cogrion.com after [1, 3] (new workspace)",
            "acme ~ wait for acm certificate *.w-acme.sgp-1.cogrion.com to be ISSUED after [4] (new workspace)",
            "acme ~ db tenants row w-acme (status active) after [5, 2] (new workspace)",
            "acme ~ db lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com after [6] (new workspace)",
            "acme ~ db workspaces row (status active) after [7] (provisioned)",
        ]
    );
    assert_eq!(
        plan.steps[1].action,
        Action::CreateZone {
            zone: "w-acme.sgp-1.cogrion.com".into(),
            caller_reference: "cplane/sgp-1/w-acme/g1".into()
        }
    );
    match &plan.steps[3].action {
        Action::RequestCertificate { token, .. } => {
            assert_eq!(token.len(), 32);
            assert_eq!(*token, certificate_token(&acme, 1), "deterministic");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.counts(), (4, 5, 0));
}

#[test]
fn nothing_changed_plans_nothing() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert!(plan.is_empty(), "{:#?}", plan);
}

#[test]
fn resuming_after_a_crash_plans_only_what_is_not_done() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    observed.workspaces.insert(
        "acme".into(),
        ObservedWorkspace {
            applied: acme.clone(),
            generation: 1,
            status: Status::Provisioning,
        },
    );
    observed.journal.insert(
        ("acme".into(), StepKind::CreateZone),
        JournalEntry {
            state: JournalState::Done,
            result: None,
        },
    );
    // Outcome unknown: planned again, and apply looks it up instead of creating.
    observed.journal.insert(
        ("acme".into(), StepKind::DelegateZone),
        JournalEntry {
            state: JournalState::Started,
            result: None,
        },
    );
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        [
            "acme + route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account) after [] (converge)",
            "acme + acm certificate *.w-acme.sgp-1.cogrion.com + w-acme.sgp-1.cogrion.com (tenant account) after [] (converge)",
            "acme + route53 validation CNAMEs in w-acme.sgp-1.cogrion.com after [1] (converge)",
            "acme ~ wait for acm certificate *.w-acme.sgp-1.cogrion.com to be ISSUED after [2] (converge)",
            "acme ~ db tenants row w-acme (status active) after [3, 0] (converge)",
            "acme ~ db lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com after [4] (converge)",
            "acme ~ db workspaces row (status active) after [5] (provisioned)",
        ]
    );
}

#[test]
fn only_stack_values_changed_plans_no_cloud_steps() {
    // Stack values do not reach the desired workspace at all: the infrastructure is the same.
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert!(plan.steps.iter().all(|s| !s.action.is_cloud()));
    assert!(plan.is_empty());
}

#[test]
fn changed_role_updates_the_row_only() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let mut changed = acme.clone();
    changed.external_id = "rotated".into();
    let plan = plan(&desired(&[changed]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        ["acme ~ db workspaces row (status active) after [] (workspace changed)"]
    );
}

#[test]
fn moving_a_workspace_to_another_region_is_refused() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let mut moved = acme.clone();
    moved.region = "fra-1".into();
    moved.zone_name = "w-acme.fra-1.cogrion.com".into();
    let plan = plan(&desired(&[moved]), &observed, Options::default());
    assert!(plan.steps.is_empty());
    assert_eq!(
        plan.refused,
        [Refusal {
            workspace: "acme".into(),
            message: "workspace acme moved from sgp-1/prod to fra-1/prod: its zone, certificate and records belong to the old region; remove it and add it under a new id".into()
        }]
    );
}

#[test]
fn removed_workspace_with_retain_keeps_tenant_resources_but_not_the_delegation() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let plan = plan(&desired(&[]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        [
            "acme ~ db workspaces row (status deprovisioning) after [] (removed from the state repo)",
            "acme - db lookup entry after [0] (removed from the state repo)",
            "acme - route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account) after [1] (removed, any deletionPolicy)",
            "acme ~ db tenants row w-acme (status retained) after [2] (removed from the state repo)",
            "acme ~ db workspaces row (status retained) after [3] (removed from the state repo)",
        ]
    );
    // Only the operator-account delegation: certificate, records and zone stay.
    let cloud: Vec<_> = plan.steps.iter().filter(|s| s.action.is_cloud()).collect();
    assert_eq!(cloud.len(), 1);
    assert!(matches!(cloud[0].action, Action::RemoveDelegation { .. }));
}

#[test]
fn a_workspace_re_added_after_a_retain_removal_is_delegated_again() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let w = observed.workspaces.get_mut("acme").expect("acme");
    w.status = Status::Retained;
    observed.journal.insert(
        ("acme".into(), StepKind::RemoveDelegation),
        JournalEntry {
            state: JournalState::Done,
            result: None,
        },
    );
    observed.tenants.get_mut("acme").expect("row").status = "retained".into();
    observed.lookup.clear();
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        [
            "acme ~ db workspaces row (status provisioning) after [] (workspace changed)",
            "acme + route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account) after [] (re-added: its delegation was removed)",
            "acme ~ db tenants row w-acme (status active) after [1] (converge)",
            "acme ~ db lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com after [2] (converge)",
            "acme ~ db workspaces row (status active) after [3] (provisioned)",
        ]
    );
}

#[test]
fn a_changed_aws_region_is_refused_a_first_recorded_one_is_not() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let mut moved = acme.clone();
    moved.aws_region = "ap-southeast-2".into();
    let plan1 = plan(&desired(&[moved]), &observed, Options::default());
    assert!(plan1.steps.is_empty());
    assert_eq!(
        plan1.refused,
        [Refusal {
            workspace: "acme".into(),
            message: "workspace acme moved from AWS region ap-southeast-1 to ap-southeast-2 (its Region's spec.awsRegion changed): its certificate lives in ap-southeast-1; remove it and add it under a new id, or restore spec.awsRegion".into()
        }]
    );
    // A row written before the region was recorded: recorded now, nothing else.
    observed
        .workspaces
        .get_mut("acme")
        .expect("acme")
        .applied
        .aws_region = String::new();
    let plan2 = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        steps(&plan2),
        ["acme ~ db workspaces row (status active) after [] (workspace changed)"]
    );
}

#[test]
fn removed_workspace_with_delete_removes_the_delegation_first() {
    let mut acme = ws("acme");
    acme.deletion_policy = Policy::Delete;
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let plan = plan(&desired(&[]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        [
            "acme ~ db workspaces row (status deprovisioning) after [] (removed from the state repo)",
            "acme - db lookup entry after [0] (removed from the state repo)",
            "acme - route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account) after [1] (removed, any deletionPolicy)",
            "acme - acm certificate *.w-acme.sgp-1.cogrion.com (tenant account) after [2] (removed, deletionPolicy: Delete)",
            "acme - route53 validation CNAMEs in w-acme.sgp-1.cogrion.com after [3] (removed, deletionPolicy: Delete)",
            "acme - route53 hosted zone w-acme.sgp-1.cogrion.com (tenant account) after [4] (removed, deletionPolicy: Delete)",
            "acme ~ db tenants row w-acme (status deleted) after [5] (removed from the state repo)",
            "acme ~ db workspaces row (status deleted) after [6] (removed from the state repo)",
        ]
    );
    let forced = super::plan(
        &desired(&[]),
        &observed,
        Options {
            delete_foreign_records: true,
            ..Options::default()
        },
    );
    assert_eq!(
        forced.steps[5].action.to_string(),
        "route53 hosted zone w-acme.sgp-1.cogrion.com (tenant account) with the records cplane did not create"
    );
}

#[test]
fn mass_removal_is_held_until_confirmed() {
    let all: Vec<DesiredWorkspace> = (0..7).map(|i| ws(&format!("t{i}"))).collect();
    let mut observed = Observed::default();
    for w in &all {
        provisioned(&mut observed, w);
    }
    let keep = desired(&all[..1]);
    let held = plan(
        &keep,
        &observed,
        Options {
            max_deletions: 5,
            confirmed: false,
            ..Options::default()
        },
    );
    assert!(held.steps.is_empty());
    assert_eq!(
        held.held.as_deref(),
        Some("this revision removes 6 workspaces (t1, t2, t3, t4, t5, t6), more than the limit of 5: nothing is removed until confirmed (--confirm-deletions, or a commit with the trailer `Cplane-Confirm-Deletions: 6`)")
    );
    let confirmed = plan(
        &keep,
        &observed,
        Options {
            max_deletions: 5,
            confirmed: true,
            ..Options::default()
        },
    );
    assert!(confirmed.held.is_none());
    // Each: marked, lookup entry, delegation, tenants row, marked retained.
    assert_eq!(confirmed.steps.len(), 6 * 5);
    // At the limit, no hold.
    let five = plan(
        &desired(&all[..2]),
        &observed,
        Options {
            max_deletions: 5,
            confirmed: false,
            ..Options::default()
        },
    );
    assert!(five.held.is_none());
}

#[test]
fn drift_deleted_delegation_is_restored() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    observed.delegations = Some(BTreeMap::new());
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        ["acme ~ route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (drift: restore) after [] (drift: NS delegation missing)"]
    );
}

#[test]
fn drift_altered_delegation_is_restored_and_intact_one_is_left_alone() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let zone = acme.zone_name.clone();
    observed.delegations = Some(BTreeMap::from([(
        zone.clone(),
        vec!["ns-2.example".into(), "ns-1.example".into()],
    )]));
    assert!(plan(
        &desired(std::slice::from_ref(&acme)),
        &observed,
        Options::default()
    )
    .is_empty());
    observed.delegations = Some(BTreeMap::from([(zone, vec!["ns.attacker.example".into()])]));
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        ["acme ~ route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (drift: restore) after [] (drift: NS delegation altered)"]
    );
}

#[test]
fn drift_hand_edited_tenant_row_and_lookup_are_restored() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    observed.tenants.get_mut("acme").expect("row").status = "suspended".into();
    observed.lookup.remove("acme");
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        [
            "acme ~ db tenants row w-acme (status active) after [] (drift: tenants row differs)",
            "acme ~ db lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com after [0] (converge)",
        ]
    );
}

#[test]
fn unobserved_tenant_rows_are_written_again_and_removals_still_recorded() {
    // The primary region is unreachable: its rows are unknown, not absent.
    let (acme, mut globex) = (ws("acme"), ws("globex"));
    globex.deletion_policy = Policy::Delete;
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    provisioned(&mut observed, &globex);
    observed.tenants.clear();
    observed.tenants_unobserved = Some("the primary region is unreachable".into());
    observed.delegations = None;
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    let s = steps(&plan);
    assert_eq!(
        s[0],
        "acme ~ db tenants row w-acme (status active) after [] (tenants rows not observed (primary region unreachable))"
    );
    assert!(
        s.contains(
            &"globex ~ db tenants row w-globex (status deleted) after [6] (removed from the state repo)"
                .to_owned()
        ),
        "{s:#?}"
    );
    let row = plan
        .steps
        .iter()
        .find_map(|st| match &st.action {
            Action::WriteTenant { row } if st.workspace == "globex" => Some(row.clone()),
            _ => None,
        })
        .expect("globex's row");
    assert_eq!(
        (row.region.as_str(), row.delegated_zone.as_str()),
        ("sgp-1", "w-globex.sgp-1.cogrion.com")
    );
}

#[test]
fn re_adding_a_deleted_workspace_starts_a_new_generation() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    observed.workspaces.get_mut("acme").expect("row").status = Status::Deleted;
    // What a deletion leaves in the journal.
    observed.journal.insert(
        ("acme".into(), StepKind::DeleteZone),
        JournalEntry {
            state: JournalState::Done,
            result: None,
        },
    );
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        plan.steps[0].action,
        Action::WriteWorkspace {
            status: Status::Provisioning,
            generation: 2
        }
    );
    assert_eq!(
        plan.steps[1].action,
        Action::CreateZone {
            zone: "w-acme.sgp-1.cogrion.com".into(),
            caller_reference: "cplane/sgp-1/w-acme/g2".into()
        }
    );
}

#[test]
fn every_step_comes_after_its_dependencies() {
    let list: Vec<DesiredWorkspace> = (0..5).map(|i| ws(&format!("d{i}"))).collect();
    let plan = plan(&desired(&list), &Observed::default(), Options::default());
    for (i, step) in plan.steps.iter().enumerate() {
        assert!(
            step.after.iter().all(|a| *a < i),
            "step {i} depends on a later step"
        );
        assert!(step
            .after
            .iter()
            .all(|a| plan.steps[*a].workspace == step.workspace));
    }
}

#[test]
fn drift_missing_or_altered_validation_record_is_restored_only_when_checked() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let record = StepResult::ValidationRecords {
        records: vec![RecordSet {
            name: "_x1.w-acme.sgp-1.cogrion.com".into(),
            rtype: "CNAME".into(),
            ttl: 300,
            values: vec!["_y1.acm-validations.aws".into()],
        }],
    };
    observed.journal.insert(
        ("acme".into(), StepKind::ValidationRecords),
        JournalEntry {
            state: JournalState::Done,
            result: Some(record),
        },
    );
    // Not in this check's sample: nothing.
    assert!(plan(
        &desired(std::slice::from_ref(&acme)),
        &observed,
        Options::default()
    )
    .is_empty());
    // Checked and intact: nothing.
    let intact = BTreeMap::from([(
        "_x1.w-acme.sgp-1.cogrion.com".to_owned(),
        vec!["_y1.acm-validations.aws".to_owned()],
    )]);
    observed.validation.insert("acme".into(), intact);
    assert!(plan(
        &desired(std::slice::from_ref(&acme)),
        &observed,
        Options::default()
    )
    .is_empty());
    // Checked and gone: restored.
    observed.validation.insert("acme".into(), BTreeMap::new());
    assert_eq!(
        steps(&plan(&desired(&[acme]), &observed, Options::default())),
        ["acme ~ route53 validation CNAMEs in w-acme.sgp-1.cogrion.com (drift: restore) after [] (drift: validation record missing or altered)"]
    );
}

#[test]
fn generations_follow_the_planner() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    assert_eq!(generation_of(None, true), 1);
    provisioned(&mut observed, &acme);
    assert_eq!(generation_of(observed.workspaces.get("acme"), true), 1);
    observed.workspaces.get_mut("acme").expect("row").status = Status::Deleted;
    assert_eq!(
        generation_of(observed.workspaces.get("acme"), true),
        2,
        "re-created"
    );
    assert_eq!(
        generation_of(observed.workspaces.get("acme"), false),
        1,
        "being removed"
    );
    observed.journal.insert(
        ("acme".into(), StepKind::DeleteZone),
        JournalEntry {
            state: JournalState::Done,
            result: None,
        },
    );
    let p = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        p.steps[0].action,
        Action::WriteWorkspace {
            status: Status::Provisioning,
            generation: 2
        }
    );
}

#[test]
fn a_row_edited_to_deleted_by_hand_is_reported_not_provisioned_again() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    observed.workspaces.get_mut("acme").expect("row").status = Status::Deleted;
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert!(plan.steps.is_empty(), "no second zone: {:?}", steps(&plan));
    assert_eq!(
        plan.refused,
        [Refusal {
            workspace: "acme".into(),
            message: "drift: the workspaces row of acme says `deleted`, but its journal never deleted its zone (generation 1): the row was edited by hand; set its status back (e.g. `active`) and cplane converges it".into()
        }]
    );
}

#[test]
fn hand_edited_workspace_row_fields_are_written_back() {
    let acme = ws("acme");
    let mut observed = Observed::default();
    provisioned(&mut observed, &acme);
    let row = &mut observed.workspaces.get_mut("acme").expect("row").applied;
    row.zone_name = "w-evil.example.com".into();
    row.role_arn = "arn:aws:iam::999999999999:role/x".into();
    let plan = plan(&desired(&[acme]), &observed, Options::default());
    assert_eq!(
        steps(&plan),
        ["acme ~ db workspaces row (status active) after [] (workspace changed)"],
        "the row is rewritten from the state repo, nothing else moves"
    );
}
