import { faker } from '@faker-js/faker'
import type { NtsoekheClient } from '../client/index.js'
import { DEFAULT_ROLES } from '../security/rights.js'
import type { Io } from './index.js'

/** Rows per table per unit of --scale, as the first design document's Faker script makes them */
export const SEED_UNIT = 20
const CONCURRENCY = 16

const SPECIALIZATIONS = ['Cardiology', 'Dermatology', 'Neurology', 'Pediatrics', 'Oncology', 'Orthopedics', 'Psychiatry', 'Radiology', 'General Practice', 'Endocrinology']
const MEDICATIONS = ['Amoxicillin', 'Lisinopril', 'Metformin', 'Atorvastatin', 'Omeprazole', 'Amlodipine', 'Albuterol', 'Ibuprofen', 'Paracetamol', 'Insulin', 'Warfarin', 'Prednisone']
const TESTS = ['Complete blood count', 'Lipid panel', 'HbA1c', 'Liver function', 'Thyroid panel', 'Urinalysis', 'Chest X-ray', 'ECG']
const ALLERGIES = ['Penicillin', 'Peanuts', 'Latex', 'Pollen', 'Shellfish', 'None']

const digits = (n: number): string => faker.string.numeric(n)
const clip = (s: string, n: number): string => s.length <= n ? s : s.slice(0, n)
const email = (): string => clip(faker.internet.email().toLowerCase(), 50)
const day = (from: string, to: string): string => faker.date.between({ from, to }).toISOString().slice(0, 10)
const moment = (from: string, to: string): string => faker.date.between({ from, to }).toISOString()

/** The roles demo users are given, in turn (admins are made by hand: `ntsoekhe user add <name> --role admin`) */
const USER_ROLES = ['doctor', 'nurse', 'billing', 'auditor']

/**
 * Loads demo data through the API, with a progress bar; returns rows
 * written per table. Every table gets rows: `users` gets demo users (their
 * tokens are not kept), and `user_roles` the roles it lacks (a network
 * is created with all of them, so usually none), which `seed` says on
 * stderr.
 */
export async function seed (client: NtsoekheClient, scale: number, io: Io): Promise<Record<string, number>> {
  if (!Number.isSafeInteger(scale) || scale < 1) throw new Error('--scale must be a positive integer')
  const n = SEED_UNIT * scale
  const total = n * 9 + DEFAULT_ROLES.length
  const bar = await progress(io, total)
  const counts: Record<string, number> = {}
  const insert = async (table: string, row: Record<string, unknown>): Promise<string> => {
    const r = await client.insert(table, row)
    counts[table] = (counts[table] ?? 0) + 1
    bar.increment()
    return r.id
  }
  try {
    const { ids: roles, created } = await ensureRoles(client, bar)
    if (created.length > 0) counts.user_roles = created.length
    io.stderr.write(created.length > 0
      ? `seed: created the roles ${created.join(', ')} (user_roles), which this network lacked\n`
      : `seed: the network's roles (user_roles: ${DEFAULT_ROLES.map(r => r.name).join(', ')}) are there already and are reused\n`)
    await pool(n, async i => {
      // Names are drawn until one is free: user_name is unique across the network.
      for (let attempt = 0; ; attempt++) {
        const name = clip(`${faker.person.firstName()}.${faker.person.lastName()}${attempt === 0 ? '' : attempt}`.toLowerCase().replace(/[^a-z0-9.]/g, ''), 50)
        try {
          await client.addUser(name, USER_ROLES[i % USER_ROLES.length] as string)
          break
        } catch (err) {
          if ((err as { code?: unknown }).code !== 'CONFLICT' || attempt >= 10) throw err
        }
      }
      counts.users = (counts.users ?? 0) + 1
      bar.increment()
    })
    const doctors = await pool(n, async () => await insert('doctors_info', {
      name: clip(`Dr. ${faker.person.fullName()}`, 150),
      specialization: faker.helpers.arrayElement(SPECIALIZATIONS),
      contact_number: digits(10),
      email: email(),
      availability: faker.helpers.arrayElement(['Mon-Fri 08:00-16:00', 'Mon-Wed 09:00-17:00', 'Tue-Sat 10:00-18:00', 'Weekends 08:00-14:00'])
    }))
    const patients = await pool(n, async () => await insert('patient_records', {
      patient_name: clip(faker.person.fullName(), 150),
      date_of_birth: day('1930-01-01', '2020-12-31'),
      gender: faker.helpers.arrayElement(['Male', 'Female', 'Other']),
      address: clip(faker.location.streetAddress(), 100),
      contact_number: digits(10),
      email: email(),
      allergies: faker.helpers.arrayElement(ALLERGIES)
    }))
    const medications = await pool(n, async () => await insert('medications', {
      name: clip(faker.helpers.arrayElement(MEDICATIONS), 20),
      dosage: `${faker.helpers.arrayElement([5, 10, 20, 50, 100, 250, 500])} mg`,
      manufacturer: clip(faker.company.name(), 100)
    }))
    await pool(n, async () => await insert('appointments', {
      patient_id: Number(faker.helpers.arrayElement(patients)),
      doctor_id: Number(faker.helpers.arrayElement(doctors)),
      appointment_date: moment('2024-01-01', '2026-12-31'),
      purpose: clip(faker.helpers.arrayElement(['Routine check-up', 'Follow-up', 'Consultation', 'Vaccination', 'Lab review']), 100)
    }))
    const history = await pool(n, async () => {
      const patient = Number(faker.helpers.arrayElement(patients))
      const id = await insert('medical_history', {
        patient_id: patient,
        diagnosis: clip(faker.lorem.sentence(), 200),
        treatment: clip(faker.lorem.sentence(), 200),
        date_of_visit: moment('2020-01-01', '2026-10-31'),
        role_id: faker.helpers.arrayElement(roles)
      })
      return { id, patient }
    })
    await pool(n, async () => await insert('billing_insurance', {
      patient_id: Number(faker.helpers.arrayElement(patients)),
      amount: faker.finance.amount({ min: 20, max: 5000, dec: 2 }),
      date: day('2024-01-01', '2026-10-31'),
      insurance_provider: clip(faker.company.name(), 100),
      insurance_policy_number: faker.string.alphanumeric(12).toUpperCase()
    }))
    // Unique patient-medication pairs, as the design document asks.
    const pairs = new Set<string>()
    while (pairs.size < n && pairs.size < patients.length * medications.length) {
      pairs.add(`${faker.helpers.arrayElement(patients)}:${faker.helpers.arrayElement(medications)}`)
    }
    const pairList = [...pairs]
    await pool(pairList.length, async i => {
      const [p, m] = (pairList[i] as string).split(':')
      return await insert('patient_medications', { patient_id: Number(p), medication_id: Number(m) })
    })
    await pool(n, async () => {
      const record = faker.helpers.arrayElement(history)
      return await insert('lab_results', {
        record_id: Number(record.id),
        patient_id: record.patient,
        test_name: faker.helpers.arrayElement(TESTS),
        test_date: day('2020-01-01', '2026-10-31'),
        test_result: clip(faker.helpers.arrayElement(['Normal', 'Slightly elevated', 'Within range', 'Abnormal: follow-up advised', 'Negative', 'Positive']), 200)
      })
    })
  } finally {
    bar.stop()
  }
  return counts
}

/** The roles the access rules know; found (a network is created with them), or created when missing */
async function ensureRoles (client: NtsoekheClient, bar: { increment: () => void }): Promise<{ ids: number[], created: string[] }> {
  const ids: number[] = []
  const created: string[] = []
  for (const { id, name } of DEFAULT_ROLES) {
    const found = await client.query('user_roles', { role_name: name }, { limit: 1 })
    const existing = found.rows[0]
    if (existing !== undefined) {
      ids.push(Number(existing.role_id))
    } else {
      const r = await client.insert('user_roles', { role_id: id, role_name: name }).catch(async () => await client.insert('user_roles', { role_name: name }))
      ids.push(Number(r.id))
      created.push(name)
    }
    bar.increment()
  }
  return { ids, created }
}

async function pool<T> (count: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(count)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++
      out[i] = await fn(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, count) }, worker))
  return out
}

async function progress (io: Io, total: number): Promise<{ increment: () => void, stop: () => void }> {
  if (io.stderr.isTTY !== true) return { increment: () => {}, stop: () => {} }
  const { SingleBar, Presets } = await import('cli-progress')
  const bar = new SingleBar({ format: 'seeding [{bar}] {percentage}% | {value}/{total} rows', stream: io.stderr as NodeJS.WritableStream }, Presets.shades_classic)
  bar.start(total, 0)
  return { increment: () => { bar.increment() }, stop: () => { bar.stop() } }
}
