use super::*;

fn key(i: u8) -> SigningKey {
    signing_key_from_seed([i; 32])
}

#[test]
fn sign_then_verify() {
    let k = key(1);
    let sig = Signature::from_bytes(&sign(&k, b"hello"));
    assert_eq!(verify(&k.verifying_key(), b"hello", &sig), Ok(()));
    assert_eq!(
        verify(&k.verifying_key(), b"hellO", &sig),
        Err(SignatureError::Invalid)
    );
    // The prefix is part of the message: a plain signature over the payload does not verify.
    let plain = k.sign(b"hello");
    assert_eq!(
        verify(&k.verifying_key(), b"hello", &plain),
        Err(SignatureError::Invalid)
    );
}

#[test]
fn weak_and_malformed_keys_are_refused() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(parse_public_key(&identity), Err(KeyError::Weak));
    assert_eq!(parse_public_key(&[1u8; 31]), Err(KeyError::Length(31)));
    assert!(parse_public_key(key(3).verifying_key().as_bytes()).is_ok());
}

#[test]
fn batch_finds_exactly_the_bad_items() {
    let keys: Vec<SigningKey> = (0..37).map(key).collect();
    let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    let payloads: Vec<Vec<u8>> = (0..37u8).map(|i| vec![i; 20]).collect();
    let mut sigs: Vec<Signature> = keys
        .iter()
        .zip(&payloads)
        .map(|(k, p)| Signature::from_bytes(&sign(k, p)))
        .collect();
    let bad = [3usize, 4, 20, 36];
    for &b in &bad {
        // Signature by another key.
        sigs[b] = Signature::from_bytes(&sign(&keys[(b + 1) % 37], &payloads[b]));
    }
    let items: Vec<BatchItem<'_>> = (0..37)
        .map(|i| BatchItem {
            key: &vks[i],
            payload: &payloads[i],
            signature: &sigs[i],
        })
        .collect();
    let (ok, stats) = verify_batch(&items);
    for (i, v) in ok.iter().enumerate() {
        assert_eq!(*v, !bad.contains(&i), "item {i}");
    }
    // The whole batch, then the three chunks of 16, 16 and 5; each chunk holds a bad item, so all 37
    // are checked singly.
    assert_eq!(
        stats,
        BatchStats {
            batch_checks: 4,
            single_checks: 37
        }
    );
    // One bad item among 50: only its chunk is checked singly.
    let keys: Vec<SigningKey> = (0..50).map(key).collect();
    let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 9]).collect();
    let mut sigs: Vec<Signature> = keys
        .iter()
        .zip(&payloads)
        .map(|(k, p)| Signature::from_bytes(&sign(k, p)))
        .collect();
    sigs[36] = Signature::from_bytes(&sign(&keys[0], &payloads[36]));
    let fifty: Vec<BatchItem<'_>> = (0..50)
        .map(|i| BatchItem {
            key: &vks[i],
            payload: &payloads[i],
            signature: &sigs[i],
        })
        .collect();
    let (ok, stats) = verify_batch(&fifty);
    for (i, v) in ok.iter().enumerate() {
        assert_eq!(*v, i != 36, "item {i}");
    }
    assert_eq!(
        stats,
        BatchStats {
            batch_checks: 5,
            single_checks: 16
        }
    );

    let good: Vec<BatchItem<'_>> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| !bad.contains(i))
        .map(|(_, x)| *x)
        .collect();
    let (ok, stats) = verify_batch(&good);
    assert!(ok.iter().all(|v| *v));
    assert_eq!(
        stats,
        BatchStats {
            batch_checks: 1,
            single_checks: 0
        }
    );
}

#[test]
fn small_order_table_is_exactly_the_weak_encodings() {
    let table = small_order_encodings();
    // y = 1, -1, 0 and the two order-8 y values, with either sign bit, plus the non-canonical
    // p and p + 1 with either sign bit.
    assert_eq!(table.len(), 14);
    for e in table {
        let k = VerifyingKey::from_bytes(e).expect("decompresses");
        assert!(k.is_weak(), "{} is of small order", hex::encode(e));
    }
    // Honest signatures never have a small-order R.
    for i in 0..200u8 {
        let sig = Signature::from_bytes(&sign(&key(i), &[i; 9]));
        assert!(!r_is_small_order(&sig));
        let r = VerifyingKey::from_bytes(sig.r_bytes()).unwrap();
        assert!(!r.is_weak());
    }
}
